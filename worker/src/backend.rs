//! ONNX Runtime sessions for the two towers.
//!
//! ONNX Runtime is loaded at run time (`ort`'s `load-dynamic`) from the shared
//! library of the PyPI wheel (`onnxruntime` for CPU, `onnxruntime-gpu` for
//! CUDA/TensorRT), so the binary builds without downloading anything and one
//! build serves every provider.
//!
//! A GPU provider that cannot be registered is a fatal start-up error: ONNX
//! Runtime's default is to fall back to the CPU silently, which on a GPU node
//! means a worker that is ready but a hundred times too slow.
//!
//! A session is driven by one thread (`Session::run` takes `&mut self`);
//! concurrency comes from batching and, on a GPU with room, several sessions.
//! The batchers see a session only as a [`Backend`], which both towers
//! implement here.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::ep::ExecutionProviderDispatch;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{Tensor, TensorElementType, ValueType};
use sha2::{Digest, Sha256};

pub use crate::batch::InferenceError;
use crate::batch::{Backend, ImageBatch, TextBatch};
use crate::config::{ExecutionProvider, WorkerConfig};
use crate::model::{ModelDir, ModelError};

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime (once per process) and returns its environment.
pub fn environment(library: Option<&Path>) -> Result<ort::environment::Environment, String> {
    ENVIRONMENT
        .get_or_init(|| {
            let path: PathBuf = match library {
                Some(p) => p.to_path_buf(),
                None => std::env::var_os("ORT_DYLIB_PATH")
                    .map(PathBuf::from)
                    .ok_or_else(|| {
                        "ONNX Runtime library not configured: set --ort-library or ORT_DYLIB_PATH \
                         (scripts/python-env.sh --exports prints it)"
                            .to_string()
                    })?,
            };
            ort::init_from(&path)
                .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?
                .with_name("medembed-worker")
                .build()
                .map_err(|e| format!("cannot create the ONNX Runtime environment: {e}"))
        })
        .clone()
}

/// Everything needed to create sessions.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Execution provider.
    pub provider: ExecutionProvider,
    /// GPU ordinal.
    pub device_id: i32,
    /// TensorRT cache directory.
    pub trt_cache_dir: PathBuf,
    /// TensorRT fp16.
    pub trt_fp16: bool,
    /// Intra-op threads.
    pub intra_threads: usize,
    /// Whether idle intra-op threads spin.
    pub spinning: bool,
}

impl SessionOptions {
    /// From the worker's configuration.
    pub fn from_config(cfg: &WorkerConfig) -> Self {
        Self {
            provider: cfg.execution_provider,
            device_id: cfg.device_id,
            trt_cache_dir: cfg.trt_cache_dir.clone(),
            trt_fp16: cfg.trt_fp16,
            intra_threads: cfg.intra_threads(),
            spinning: cfg.ort_spinning,
        }
    }

    fn providers(&self, graph: &Path) -> Result<Vec<ExecutionProviderDispatch>, String> {
        let cuda = || {
            ort::ep::CUDA::default()
                .with_device_id(self.device_id)
                .build()
                .error_on_failure()
        };
        Ok(match self.provider {
            ExecutionProvider::Cpu => vec![],
            ExecutionProvider::Cuda => vec![cuda()],
            ExecutionProvider::Tensorrt => {
                // Engines are specific to the graph, the GPU and the TensorRT
                // version; ONNX Runtime names cache files after the latter two,
                // the directory after the graph's content hash covers the first.
                let dir = self.trt_cache_dir.join(file_sha256(graph)?);
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("cannot create TensorRT cache {}: {e}", dir.display()))?;
                let dir = dir.display().to_string();
                vec![
                    ort::ep::TensorRT::default()
                        .with_device_id(self.device_id)
                        .with_fp16(self.trt_fp16)
                        .with_engine_cache(true)
                        .with_engine_cache_path(&dir)
                        .with_timing_cache(true)
                        .with_timing_cache_path(&dir)
                        .build()
                        .error_on_failure(),
                    cuda(),
                ]
            }
        })
    }
}

fn file_sha256(path: &Path) -> Result<String, String> {
    let mut f =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(h.finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn open_session(
    env: &ort::environment::Environment,
    graph: &Path,
    opts: &SessionOptions,
) -> Result<Session, String> {
    let providers = opts.providers(graph)?;
    let mut builder = Session::builder(env)
        .map_err(|e| e.to_string())?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| e.to_string())?
        .with_intra_threads(opts.intra_threads)
        .map_err(|e| e.to_string())?
        .with_intra_op_spinning(opts.spinning)
        .map_err(|e| e.to_string())?
        .with_inter_op_spinning(opts.spinning)
        .map_err(|e| e.to_string())?;
    if !providers.is_empty() {
        builder = builder.with_execution_providers(providers).map_err(|e| {
            format!(
                "{} execution provider could not be registered: {e}",
                opts.provider.as_str()
            )
        })?;
    }
    builder.commit_from_file(graph).map_err(|e| e.to_string())
}

/// Expected element type and shape of one graph input or output.
struct Expect<'a> {
    name: &'a str,
    ty: TensorElementType,
    /// Dimensions after the batch axis.
    dims: Vec<i64>,
}

fn check_outlet(outlets: &[ort::value::Outlet], kind: &str, e: &Expect<'_>) -> Result<(), String> {
    let found = outlets.iter().find(|o| o.name() == e.name).ok_or_else(|| {
        let names: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
        format!("{kind} {:?} not found (the graph has {names:?})", e.name)
    })?;
    let ValueType::Tensor { ty, shape, .. } = found.dtype() else {
        return Err(format!("{kind} {:?} is not a tensor", e.name));
    };
    if *ty != e.ty {
        return Err(format!(
            "{kind} {:?} has element type {ty:?}, expected {:?}",
            e.name, e.ty
        ));
    }
    let dims: Vec<i64> = shape.iter().copied().collect();
    let wrong_shape = || {
        let want: Vec<String> = e.dims.iter().map(i64::to_string).collect();
        format!(
            "{kind} {:?} has shape {dims:?}, expected [batch, {}]",
            e.name,
            want.join(", ")
        )
    };
    if dims.len() != e.dims.len() + 1 {
        return Err(wrong_shape());
    }
    if dims[0] > 0 {
        return Err(format!(
            "{kind} {:?} has a fixed batch size {}; export it with a dynamic batch axis",
            e.name, dims[0]
        ));
    }
    if dims[1..] != e.dims[..] {
        return Err(wrong_shape());
    }
    Ok(())
}

/// The image tower: `[n, 3, size, size]` f32 → `[n, dim]`.
pub struct ImageModel {
    session: Session,
    input: String,
    output: String,
    size: usize,
    dim: usize,
}

/// The text tower: `[n, context]` i64 ids and mask → `[n, dim]`.
pub struct TextModel {
    session: Session,
    input_ids: String,
    attention_mask: String,
    output: String,
    context: usize,
    dim: usize,
}

impl std::fmt::Debug for ImageModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ImageModel({} -> {})", self.input, self.output)
    }
}

impl std::fmt::Debug for TextModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TextModel({}, {} -> {})",
            self.input_ids, self.attention_mask, self.output
        )
    }
}

/// Opens `graph_file` of the model directory and checks its inputs (exactly
/// these, in any order) and outputs against the config.
fn load_checked(
    model: &ModelDir,
    graph_file: &str,
    opts: &SessionOptions,
    library: Option<&Path>,
    inputs: &[Expect<'_>],
    outputs: &[Expect<'_>],
) -> Result<Session, ModelError> {
    let runtime = |reason: String| ModelError::Runtime {
        dir: model.path.display().to_string(),
        graph: graph_file.to_string(),
        reason,
    };
    let mismatch = |reason: String| ModelError::Mismatch {
        dir: model.path.display().to_string(),
        graph: graph_file.to_string(),
        reason,
    };
    let env = environment(library).map_err(runtime)?;
    let session = open_session(&env, &model.file(graph_file), opts).map_err(runtime)?;
    for e in inputs {
        check_outlet(session.inputs(), "input", e).map_err(mismatch)?;
    }
    for e in outputs {
        check_outlet(session.outputs(), "output", e).map_err(mismatch)?;
    }
    if session.inputs().len() != inputs.len() {
        return Err(mismatch(format!(
            "expected exactly {} input(s), found {}",
            inputs.len(),
            session.inputs().len()
        )));
    }
    Ok(session)
}

/// Opens a model directory's graphs with one set of session options.
#[derive(Debug, Clone, Copy)]
pub struct Loader<'a> {
    /// The model directory.
    pub model: &'a ModelDir,
    /// Session options.
    pub opts: &'a SessionOptions,
    /// ONNX Runtime's library, when not the default.
    pub library: Option<&'a Path>,
}

impl Loader<'_> {
    /// Opens the image graph and checks it against the config.
    pub fn image(&self) -> Result<ImageModel, ModelError> {
        let (model, c) = (self.model, &self.model.config);
        let size = i64::from(c.image.size);
        let session = load_checked(
            model,
            &c.image.onnx,
            self.opts,
            self.library,
            &[Expect {
                name: &c.image.input,
                ty: TensorElementType::Float32,
                dims: vec![3, size, size],
            }],
            &[Expect {
                name: &c.image.output,
                ty: TensorElementType::Float32,
                dims: vec![c.embedding_dim as i64],
            }],
        )?;
        Ok(ImageModel {
            session,
            input: c.image.input.clone(),
            output: c.image.output.clone(),
            size: c.image.size as usize,
            dim: c.embedding_dim,
        })
    }

    /// Opens the text graph and checks it against the config.
    pub fn text(&self) -> Result<TextModel, ModelError> {
        let (model, c) = (self.model, &self.model.config);
        let ctx = c.text.context_length as i64;
        let session = load_checked(
            model,
            &c.text.onnx,
            self.opts,
            self.library,
            &[
                Expect {
                    name: &c.text.input_ids,
                    ty: TensorElementType::Int64,
                    dims: vec![ctx],
                },
                Expect {
                    name: &c.text.attention_mask,
                    ty: TensorElementType::Int64,
                    dims: vec![ctx],
                },
            ],
            &[Expect {
                name: &c.text.output,
                ty: TensorElementType::Float32,
                dims: vec![c.embedding_dim as i64],
            }],
        )?;
        Ok(TextModel {
            session,
            input_ids: c.text.input_ids.clone(),
            attention_mask: c.text.attention_mask.clone(),
            output: c.text.output.clone(),
            context: c.text.context_length,
            dim: c.embedding_dim,
        })
    }
}

impl ImageModel {
    /// Embedding size.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Embeds `n` preprocessed images (`pixels.len() == n * 3 * size * size`),
    /// returning `n` embeddings of `dim` floats, each L2-normalised.
    pub fn run(&mut self, pixels: Vec<f32>, n: usize) -> Result<Vec<Vec<f32>>, InferenceError> {
        let shape = [n, 3, self.size, self.size];
        let tensor =
            Tensor::from_array((shape, pixels)).map_err(|e| InferenceError(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(|e| InferenceError(e.to_string()))?;
        extract(&outputs, &self.output, n, self.dim)
    }
}

impl TextModel {
    /// Embedding size.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Tokens per text.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Embeds `n` tokenized texts, returning `n` embeddings of `dim` floats,
    /// each L2-normalised.
    pub fn run(
        &mut self,
        ids: Vec<i64>,
        mask: Vec<i64>,
        n: usize,
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        let shape = [n, self.context];
        let ids = Tensor::from_array((shape, ids)).map_err(|e| InferenceError(e.to_string()))?;
        let mask = Tensor::from_array((shape, mask)).map_err(|e| InferenceError(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![
                self.input_ids.as_str() => ids,
                self.attention_mask.as_str() => mask,
            ])
            .map_err(|e| InferenceError(e.to_string()))?;
        extract(&outputs, &self.output, n, self.dim)
    }
}

impl Backend for ImageModel {
    type Batch = ImageBatch;

    fn embed(&mut self, batch: ImageBatch) -> Result<Vec<Vec<f32>>, InferenceError> {
        self.run(batch.pixels, batch.n)
    }
}

impl Backend for TextModel {
    type Batch = TextBatch;

    fn embed(&mut self, batch: TextBatch) -> Result<Vec<Vec<f32>>, InferenceError> {
        self.run(batch.ids, batch.mask, batch.n)
    }
}

/// The `[n, dim]` output `name`, as `n` rows, each L2-normalised.
fn extract(
    outputs: &ort::session::SessionOutputs<'_>,
    name: &str,
    n: usize,
    dim: usize,
) -> Result<Vec<Vec<f32>>, InferenceError> {
    let value = outputs
        .get(name)
        .ok_or_else(|| InferenceError(format!("output {name:?} missing")))?;
    let (shape, data) = value
        .try_extract_tensor::<f32>()
        .map_err(|e| InferenceError(e.to_string()))?;
    let dims: Vec<i64> = shape.iter().copied().collect();
    if dims != [n as i64, dim as i64] {
        return Err(InferenceError(format!(
            "output {name:?} has shape {dims:?}, expected [{n}, {dim}]"
        )));
    }
    // The contract is unit-norm embeddings; exports (fp16 especially) may be a
    // hair off, or forget the normalisation. Renormalising is a no-op otherwise.
    Ok(data
        .chunks_exact(dim)
        .map(|row| {
            let mut row = row.to_vec();
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            if norm > 0.0 && norm.is_finite() {
                row.iter_mut().for_each(|v| *v /= norm);
            }
            row
        })
        .collect())
}
