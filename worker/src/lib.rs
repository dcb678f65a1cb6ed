//! medembed's worker: serves a MedImageInsight-style image/text embedding model
//! over the managed endpoint's scoring API, on ONNX Runtime.
//!
//! The library exposes [`start`] (bind, then load the model in the background)
//! and [`run`] (the same, until a shutdown signal), so tests run workers
//! in-process on port 0 and `main.rs` stays a thin shell.
//!
//! Modules, from request bytes to embeddings:
//! - [`decode`] turns base64 into an 8-bit raster ([`raster`]'s types),
//!   handing DICOM files to [`dicom`]; [`window`] brings high-dynamic-range
//!   pixels (16-bit PNG, DICOM) to 8 bits for both;
//! - [`preprocess`] makes the model's tensor, with [`resample`], the exact
//!   Pillow resize; [`tokenize`] turns text into ids;
//! - [`batch`] admits work and forms batches across requests, handing them
//!   to a [`batch::Backend`]; [`backend`] implements it with the ONNX graphs;
//!   [`budget`] bounds the memory of decoded images;
//!   [`score`] answers one request; [`server`] is HTTP, or HTTPS only
//!   when a serving certificate is given (`--tls-cert-file`, reloaded when
//!   its files change: `medembed_api::tls`);
//! - [`config`] and [`model`] say what to serve and how; [`metrics`] and
//!   [`error`] are what operators and clients see.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod backend;
pub mod batch;
pub mod budget;
pub mod config;
pub mod decode;
pub mod dicom;
pub mod error;
pub mod metrics;
pub mod model;
pub mod preprocess;
pub mod raster;
pub mod resample;
pub mod score;
pub mod server;
pub mod tokenize;
pub mod window;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use medembed_api::tls::ReloadingCert;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

pub use config::WorkerConfig;

use crate::backend::{Loader, SessionOptions};
use crate::batch::{BatchPolicy, Pipeline, PipelineParts};
use crate::config::StandardizeMode;
use crate::metrics::Metrics;
use crate::model::ModelDir;
use crate::preprocess::{Standardize, Transform};
use crate::raster::{Channels, DecodeLimits, Image8};
use crate::score::Scorer;
use crate::server::AppState;
use crate::tokenize::TextTokenizer;

/// Loads the model directory, opens the sessions, runs one warm-up inference
/// per session, and starts the batching pipeline. Blocking; seconds to minutes
/// (TensorRT engine builds).
pub fn load_scorer(cfg: &WorkerConfig, metrics: &Metrics) -> anyhow::Result<Scorer> {
    let started = Instant::now();
    let model = ModelDir::open(&cfg.model_dir)?;
    let c = &model.config;
    let opts = SessionOptions::from_config(cfg);
    let lib = cfg.ort_library.as_deref();
    let mut image_models = Vec::with_capacity(cfg.sessions);
    let mut text_models = Vec::with_capacity(cfg.sessions);
    let loader = Loader {
        model: &model,
        opts: &opts,
        library: lib,
    };
    for _ in 0..cfg.sessions {
        image_models.push(loader.image()?);
        text_models.push(loader.text()?);
    }
    let tokenizer = Arc::new(TextTokenizer::load(
        &model.file(&c.text.tokenizer),
        c.text.context_length,
    )?);
    let standardize = match cfg.standardize {
        StandardizeMode::Model => c.preprocess.standardize,
        StandardizeMode::Off => None,
        StandardizeMode::On => Some(c.preprocess.standardize.unwrap_or(Standardize {
            size: 512,
            jpeg_quality: 75,
        })),
    };
    let transform = Transform {
        size: c.image.size,
        mean: c.image.mean,
        std: c.image.std,
        standardize,
    };

    // Warm-up: the first run of a session allocates and (on GPU) autotunes;
    // readiness waits for it so no client pays for it.
    let mut warm = Vec::new();
    transform
        .apply(
            &Image8 {
                width: c.image.size,
                height: c.image.size,
                channels: Channels::Gray,
                data: vec![128; (c.image.size * c.image.size) as usize],
            },
            &mut warm,
        )
        .context("warm-up preprocessing")?;
    let warm_tokens = tokenizer
        .encode_batch(["warm-up"])
        .context("warm-up tokenization")?;
    for m in &mut image_models {
        m.run(warm.clone(), 1).context("image warm-up inference")?;
    }
    for m in &mut text_models {
        m.run(
            warm_tokens.input_ids.clone(),
            warm_tokens.attention_mask.clone(),
            1,
        )
        .context("text warm-up inference")?;
    }

    let pipeline = Pipeline::start(
        PipelineParts {
            image_models,
            text_models,
            transform,
            limits: DecodeLimits {
                max_pixels: cfg.max_image_pixels,
                ..DecodeLimits::default()
            },
            windowing: c.preprocess.window,
            decode_threads: cfg.decode_threads(),
            image_policy: BatchPolicy {
                max_batch: cfg.max_batch_images,
                max_delay: cfg.max_queue_delay(),
            },
            text_policy: BatchPolicy {
                max_batch: cfg.max_batch_texts,
                max_delay: cfg.max_queue_delay(),
            },
            max_queued_images: cfg.max_queued_images,
            max_queued_texts: cfg.max_queued_texts,
            max_decoded_bytes: cfg.max_decoded_bytes,
        },
        metrics,
    )
    .context("starting the batching threads")?;
    metrics
        .model_info
        .with_label_values(&[&c.name, &c.version, cfg.execution_provider.as_str()])
        .set(1);
    tracing::info!(
        model = %c.name,
        version = %c.version,
        provider = cfg.execution_provider.as_str(),
        sessions = cfg.sessions,
        load_ms = started.elapsed().as_millis() as u64,
        "model loaded and warmed up"
    );
    Ok(Scorer {
        pipeline,
        tokenizer,
        logit_scale: c.logit_scale,
    })
}

/// A worker running in this process.
#[derive(Debug)]
pub struct RunningWorker {
    /// The bound address.
    pub addr: SocketAddr,
    /// Its state (metrics, readiness).
    pub state: Arc<AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    ready: watch::Receiver<Option<Result<(), String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningWorker {
    /// Waits until the model is loaded (Ok) or failed to load (Err).
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let r = tokio::time::timeout(timeout, self.ready.wait_for(Option::is_some))
            .await
            .context("worker did not become ready in time")?
            .map_err(|_| anyhow::anyhow!("worker stopped before loading the model"))?
            .clone();
        match r {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(anyhow::anyhow!(e)),
            None => unreachable!("waited for Some"),
        }
    }

    /// Stops accepting, finishes in-flight requests, stops the pipeline.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Binds the listener and starts serving; the model loads in the background
/// (`/readyz` answers 503 until it is loaded and warmed up).
pub async fn start(cfg: WorkerConfig) -> anyhow::Result<RunningWorker> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    // The serving certificate, when set: loaded before anything listens, so
    // a worker with unreadable TLS files fails at once, naming them.
    let tls = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(c), Some(k)) => {
            let cert = ReloadingCert::from_files(c.clone(), k.clone())
                .context("TLS certificate (--tls-cert-file, --tls-key-file)")?;
            Some((cert.handshake()?, cert))
        }
        _ => None,
    };
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let metrics = Metrics::new();
    let grace = Duration::from_secs(cfg.shutdown_grace_seconds);
    let state = AppState::new(cfg, metrics);
    let (ready_tx, ready_rx) = watch::channel(None);
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();

    let load_state = state.clone();
    let loader = tokio::task::spawn_blocking(move || {
        let result = load_scorer(&load_state.config, &load_state.metrics);
        match result {
            Ok(scorer) => {
                let _ = load_state.scorer.set(Arc::new(scorer));
                load_state.metrics.ready.set(1);
                let _ = ready_tx.send(Some(Ok(())));
            }
            Err(e) => {
                let _ = ready_tx.send(Some(Err(format!("{e:#}"))));
            }
        }
    });

    let serve_state = state.clone();
    let reload = Duration::from_millis(serve_state.config.tls_reload_ms.max(10));
    let task = tokio::spawn(async move {
        let (handshake, watcher) = match tls {
            Some((h, cert)) => (Some(h), Some(cert.watch(reload))),
            None => (None, None),
        };
        server::serve(
            serve_state.clone(),
            listener,
            handshake,
            async {
                let _ = shutdown_rx.await;
            },
            grace,
        )
        .await;
        if let Some(w) = watcher {
            w.abort();
        }
        let _ = loader.await;
        // Every accepted request is answered: let the batching threads exit.
        if let Some(scorer) = serve_state.scorer.get() {
            scorer.pipeline.close();
        }
    });
    Ok(RunningWorker {
        addr,
        state,
        shutdown: Some(shutdown_tx),
        ready: ready_rx,
        task,
    })
}

/// Runs a worker until `shutdown` resolves. Returns an error if the model
/// cannot be loaded, so the process exits non-zero and Kubernetes reports it.
pub async fn run(
    cfg: WorkerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut worker = start(cfg).await?;
    tracing::info!(addr = %worker.addr, "listening; loading model");
    tokio::pin!(shutdown);
    tokio::select! {
        r = worker.wait_ready(Duration::from_secs(24 * 3600)) => r?,
        _ = &mut shutdown => { worker.shutdown().await; return Ok(()); }
    }
    shutdown.await;
    tracing::info!("shutdown requested");
    worker.shutdown().await;
    Ok(())
}
