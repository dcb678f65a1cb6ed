//! Dynamic batching: many concurrent requests, few large inference calls.
//!
//! ```text
//!  handlers ──admission──► decode queue ──► decode threads ──(bounded)──► image batcher ─► image session(s)
//!      │                                                                        
//!      └──tokenize──admission────────────────────────────────────────────► text batcher ──► text session(s)
//! ```
//!
//! * **Admission.** Items (images, texts) are counted in when a request is
//!   accepted and out when it is answered; past the configured capacity the
//!   request is refused at once (HTTP 429) instead of queueing without bound.
//! * **Decoding ahead of inference.** A pool of CPU threads decodes and
//!   resizes images in parallel and hands 8-bit rasters to the batcher through
//!   a bounded channel, so at most about one batch waits in memory; the
//!   batcher normalises them straight into the batch's float tensor.
//! * **Batch formation.** A batcher thread per session takes what is queued,
//!   up to the maximum batch size. It waits up to the maximum queue delay for
//!   more only while more work is known to be on its way (images still being
//!   decoded), so a lone request never pays the delay.
//! * **Dropping dead work.** An item whose caller has gone (client disconnected,
//!   request failed or timed out: its reply channel is closed) or whose
//!   deadline has passed is dropped before it costs inference time.
//!
//! The pattern follows text-embeddings-inference's queue and Triton's dynamic
//! batcher (max batch size, max queue delay).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use prometheus::IntGauge;
use tokio::sync::oneshot;

use crate::backend::{ImageModel, TextModel};
use crate::decode::{self, DecodeError, DecodeLimits, Image8};
use crate::metrics::Metrics;
use crate::preprocess::Transform;
use crate::tokenize::Tokens;
use crate::window::Windowing;

/// Why one item got no embedding.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ItemError {
    /// The image could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The inference call failed.
    #[error("{0}")]
    Inference(String),
    /// The deadline passed before the item reached the model.
    #[error("deadline passed before inference")]
    Expired,
}

/// The answer to one item.
pub type Reply = oneshot::Sender<Result<Vec<f32>, ItemError>>;

/// What travels with every item.
#[derive(Debug)]
pub struct JobMeta {
    /// When it was admitted.
    pub admitted: Instant,
    /// When it stops being worth computing.
    pub deadline: Instant,
    /// Where the embedding goes.
    pub reply: Reply,
}

impl JobMeta {
    /// Whether nobody waits for the answer any more.
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// An image still encoded, as received.
#[derive(Debug)]
pub struct ImageJob {
    /// Base64 text from the request.
    pub base64: String,
    /// Bookkeeping.
    pub meta: JobMeta,
}

/// A decoded image, resized but still 8-bit: normalised to floats only when
/// copied into its batch's tensor, so a queue of ready images costs a quarter
/// (RGB) or a twelfth (grayscale) of the memory of ready tensors.
struct ReadyImage {
    raster: Image8,
    meta: JobMeta,
}

/// A tokenized text.
#[derive(Debug)]
pub struct TextJob {
    /// `context_length` ids.
    pub ids: Vec<i64>,
    /// `context_length` mask values.
    pub mask: Vec<i64>,
    /// Bookkeeping.
    pub meta: JobMeta,
}

/// A counting admission gate: at most `capacity` units held at once.
#[derive(Debug)]
pub struct Admission {
    used: AtomicUsize,
    capacity: usize,
    gauge: IntGauge,
}

/// Units held from an [`Admission`]; released on drop.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Admission>,
    n: usize,
}

impl Admission {
    /// A gate of `capacity` units, mirrored into `gauge`.
    pub fn new(capacity: usize, gauge: IntGauge) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            capacity,
            gauge,
        })
    }

    /// Takes `n` units if they fit.
    pub fn try_acquire(self: &Arc<Self>, n: usize) -> Option<Permit> {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            if cur + n > self.capacity {
                return None;
            }
            match self
                .used
                .compare_exchange_weak(cur, cur + n, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.gauge.set((cur + n) as i64);
                    return Some(Permit {
                        gate: self.clone(),
                        n,
                    });
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Units held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let before = self.gate.used.fetch_sub(self.n, Ordering::AcqRel);
        self.gate.gauge.set((before - self.n) as i64);
    }
}

/// Batching parameters of one tower.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Largest batch.
    pub max_batch: usize,
    /// Longest wait for more items once one is in hand.
    pub max_delay: Duration,
}

/// Takes the next batch: blocks for the first item, then takes what is queued
/// up to `max_batch`, waiting up to `max_delay` only while `more_coming()`.
/// Returns `None` once the channel is closed and empty.
fn next_batch<T>(
    rx: &Receiver<T>,
    policy: BatchPolicy,
    more_coming: &dyn Fn() -> bool,
) -> Option<Vec<T>> {
    let first = rx.recv().ok()?;
    let mut batch = Vec::with_capacity(policy.max_batch);
    batch.push(first);
    let until = Instant::now() + policy.max_delay;
    while batch.len() < policy.max_batch {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) if !more_coming() => break,
            Err(_) => match rx.recv_deadline(until) {
                Ok(item) => batch.push(item),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            },
        }
    }
    Some(batch)
}

/// An item travelling through a batcher.
trait Item {
    fn meta(&self) -> &JobMeta;
    fn into_meta(self) -> JobMeta;
}

impl Item for ReadyImage {
    fn meta(&self) -> &JobMeta {
        &self.meta
    }
    fn into_meta(self) -> JobMeta {
        self.meta
    }
}

impl Item for TextJob {
    fn meta(&self) -> &JobMeta {
        &self.meta
    }
    fn into_meta(self) -> JobMeta {
        self.meta
    }
}

/// Keeps the items still worth computing; drops abandoned ones and answers
/// expired ones.
fn keep_live<T: Item>(batch: Vec<T>, tower: &str, metrics: &Metrics) -> Vec<T> {
    let now = Instant::now();
    let mut live = Vec::with_capacity(batch.len());
    for item in batch {
        let m = item.meta();
        if m.abandoned() {
            metrics
                .dropped
                .with_label_values(&[tower, "cancelled"])
                .inc();
        } else if now >= m.deadline {
            metrics.dropped.with_label_values(&[tower, "expired"]).inc();
            // The handler may be gone already; then nobody listens, which is fine.
            let _ = item.into_meta().reply.send(Err(ItemError::Expired));
        } else {
            live.push(item);
        }
    }
    live
}

/// The running batching pipeline of both towers.
pub struct Pipeline {
    decode_tx: std::sync::RwLock<Option<Sender<ImageJob>>>,
    text_tx: std::sync::RwLock<Option<Sender<TextJob>>>,
    images_decoding: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<()>>,
    /// Admission of images.
    pub image_admission: Arc<Admission>,
    /// Admission of texts.
    pub text_admission: Arc<Admission>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("threads", &self.threads.len())
            .finish()
    }
}

/// What the pipeline needs to start.
pub struct PipelineParts {
    /// One model per image session.
    pub image_models: Vec<ImageModel>,
    /// One model per text session.
    pub text_models: Vec<TextModel>,
    /// The image transform.
    pub transform: Transform,
    /// Decoder limits.
    pub limits: DecodeLimits,
    /// 16-bit windowing.
    pub windowing: Windowing,
    /// Decode threads.
    pub decode_threads: usize,
    /// Image batching.
    pub image_policy: BatchPolicy,
    /// Text batching.
    pub text_policy: BatchPolicy,
    /// Image admission capacity.
    pub max_queued_images: usize,
    /// Text admission capacity.
    pub max_queued_texts: usize,
}

impl Pipeline {
    /// Starts the decode pool and one batcher thread per session.
    pub fn start(parts: PipelineParts, metrics: &Metrics) -> std::io::Result<Self> {
        let (decode_tx, decode_rx) = crossbeam_channel::unbounded::<ImageJob>();
        let (image_tx, image_rx) =
            crossbeam_channel::bounded::<ReadyImage>(parts.image_policy.max_batch);
        let (text_tx, text_rx) = crossbeam_channel::unbounded::<TextJob>();
        let images_decoding = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();

        let transform = Arc::new(parts.transform);
        for i in 0..parts.decode_threads.max(1) {
            let rx = decode_rx.clone();
            let tx = image_tx.clone();
            let transform = transform.clone();
            let metrics = metrics.clone();
            let decoding = images_decoding.clone();
            let (limits, windowing) = (parts.limits, parts.windowing);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("decode-{i}"))
                    .spawn(move || {
                        decode_loop(rx, tx, &transform, &limits, &windowing, &metrics, &decoding)
                    })?,
            );
        }
        drop(image_tx);

        for (i, model) in parts.image_models.into_iter().enumerate() {
            let rx = image_rx.clone();
            let metrics = metrics.clone();
            let decoding = images_decoding.clone();
            let policy = parts.image_policy;
            let transform = transform.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("infer-image-{i}"))
                    .spawn(move || {
                        image_loop(rx, model, &transform, policy, &metrics, &decoding)
                    })?,
            );
        }
        for (i, model) in parts.text_models.into_iter().enumerate() {
            let rx = text_rx.clone();
            let metrics = metrics.clone();
            let policy = parts.text_policy;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("infer-text-{i}"))
                    .spawn(move || text_loop(rx, model, policy, &metrics))?,
            );
        }

        Ok(Self {
            decode_tx: std::sync::RwLock::new(Some(decode_tx)),
            text_tx: std::sync::RwLock::new(Some(text_tx)),
            images_decoding,
            threads,
            image_admission: Admission::new(
                parts.max_queued_images,
                metrics.queue_depth.with_label_values(&["image"]),
            ),
            text_admission: Admission::new(
                parts.max_queued_texts,
                metrics.queue_depth.with_label_values(&["text"]),
            ),
        })
    }

    /// Queues an image for decoding and inference. After [`Pipeline::close`]
    /// the job is dropped, which its waiter sees as "shutting down".
    pub fn submit_image(&self, job: ImageJob) {
        let guard = self.decode_tx.read().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = guard.as_ref() {
            self.images_decoding.fetch_add(1, Ordering::AcqRel);
            if tx.send(job).is_err() {
                self.images_decoding.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Queues a tokenized text for inference.
    pub fn submit_text(&self, job: TextJob) {
        let guard = self.text_tx.read().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = guard.as_ref() {
            let _ = tx.send(job);
        }
    }

    /// Stops taking work; the threads finish what is queued and exit.
    pub fn close(&self) {
        self.decode_tx
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.text_tx
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Closes and waits for the threads to finish.
    pub fn join(self) {
        self.close();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn decode_loop(
    rx: Receiver<ImageJob>,
    tx: Sender<ReadyImage>,
    transform: &Transform,
    limits: &DecodeLimits,
    windowing: &Windowing,
    metrics: &Metrics,
    decoding: &AtomicUsize,
) {
    for job in rx {
        let meta = job.meta;
        // Dead work costs nothing: skip decoding it.
        if meta.abandoned() {
            metrics
                .dropped
                .with_label_values(&["image", "cancelled"])
                .inc();
            decoding.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        if Instant::now() >= meta.deadline {
            metrics
                .dropped
                .with_label_values(&["image", "expired"])
                .inc();
            decoding.fetch_sub(1, Ordering::AcqRel);
            let _ = meta.reply.send(Err(ItemError::Expired));
            continue;
        }
        let started = Instant::now();
        let result = decode::decode_base64(&job.base64).and_then(|bytes| {
            drop(job.base64);
            let img = decode::decode(&bytes, limits, windowing)?;
            drop(bytes);
            transform.resize(&img)
        });
        metrics
            .decode_duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(raster) => {
                // No longer "on its way" before it is handed over: a batcher
                // that wakes for this very image must not wait for it again
                // (that cost a whole queue delay per image at one client).
                decoding.fetch_sub(1, Ordering::AcqRel);
                // Blocks while the batcher is a full batch behind: back-pressure
                // bounds the images held in memory.
                if tx.send(ReadyImage { raster, meta }).is_err() {
                    return;
                }
            }
            Err(e) => {
                decoding.fetch_sub(1, Ordering::AcqRel);
                metrics.decode_errors.with_label_values(&[e.label()]).inc();
                let _ = meta.reply.send(Err(ItemError::Decode(e)));
            }
        }
    }
}

fn finish(batch: Vec<JobMeta>, result: Result<Vec<f32>, String>, dim: usize) {
    match result {
        Ok(out) => {
            for (meta, row) in batch.into_iter().zip(out.chunks_exact(dim)) {
                let _ = meta.reply.send(Ok(row.to_vec()));
            }
        }
        Err(e) => {
            for meta in batch {
                let _ = meta.reply.send(Err(ItemError::Inference(e.clone())));
            }
        }
    }
}

/// Runs one batch through a tower, timing it, counting what it embedded and
/// answering every item of the batch.
fn infer(
    tower: &str,
    metas: Vec<JobMeta>,
    dim: usize,
    metrics: &Metrics,
    run: impl FnOnce() -> Result<Vec<f32>, String>,
) {
    let n = metas.len();
    let started = Instant::now();
    let result = run();
    metrics
        .inference_duration
        .with_label_values(&[tower])
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(_) => metrics.items.with_label_values(&[tower]).inc_by(n as u64),
        Err(e) => tracing::error!(tower, batch = n, error = %e, "inference failed"),
    }
    finish(metas, result, dim);
}

fn observe_start(metas: &[&JobMeta], tower: &str, metrics: &Metrics) {
    let now = Instant::now();
    let h = metrics.queue_duration.with_label_values(&[tower]);
    for m in metas {
        h.observe(now.duration_since(m.admitted).as_secs_f64());
    }
    metrics
        .batch_size
        .with_label_values(&[tower])
        .observe(metas.len() as f64);
}

fn image_loop(
    rx: Receiver<ReadyImage>,
    mut model: ImageModel,
    transform: &Transform,
    policy: BatchPolicy,
    metrics: &Metrics,
    decoding: &AtomicUsize,
) {
    let more_coming = || decoding.load(Ordering::Acquire) > 0;
    while let Some(batch) = next_batch(&rx, policy, &more_coming) {
        let batch = keep_live(batch, "image", metrics);
        if batch.is_empty() {
            continue;
        }
        let n = batch.len();
        observe_start(
            &batch.iter().map(|i| &i.meta).collect::<Vec<_>>(),
            "image",
            metrics,
        );
        let mut pixels = Vec::with_capacity(n * transform.tensor_len());
        let mut metas = Vec::with_capacity(n);
        for item in batch {
            transform.normalize_into(&item.raster, &mut pixels);
            metas.push(item.into_meta());
        }
        let dim = model.dim();
        infer("image", metas, dim, metrics, || {
            model.run(pixels, n).map_err(|e| e.to_string())
        });
    }
}

fn text_loop(rx: Receiver<TextJob>, mut model: TextModel, policy: BatchPolicy, metrics: &Metrics) {
    let more_coming = || false;
    while let Some(batch) = next_batch(&rx, policy, &more_coming) {
        let batch = keep_live(batch, "text", metrics);
        if batch.is_empty() {
            continue;
        }
        let n = batch.len();
        observe_start(
            &batch.iter().map(|t| &t.meta).collect::<Vec<_>>(),
            "text",
            metrics,
        );
        let mut tokens = Tokens {
            input_ids: Vec::with_capacity(n * model.context()),
            attention_mask: Vec::with_capacity(n * model.context()),
        };
        let mut metas = Vec::with_capacity(n);
        for item in batch {
            tokens.input_ids.extend_from_slice(&item.ids);
            tokens.attention_mask.extend_from_slice(&item.mask);
            metas.push(item.into_meta());
        }
        let dim = model.dim();
        infer("text", metas, dim, metrics, || {
            model
                .run(tokens.input_ids, tokens.attention_mask, n)
                .map_err(|e| e.to_string())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_takes_what_is_queued_without_waiting_when_nothing_more_comes() {
        let (tx, rx) = crossbeam_channel::unbounded();
        for i in 0..5 {
            tx.send(i).unwrap();
        }
        let policy = BatchPolicy {
            max_batch: 3,
            max_delay: Duration::from_secs(10),
        };
        let started = Instant::now();
        assert_eq!(next_batch(&rx, policy, &|| false), Some(vec![0, 1, 2]));
        assert_eq!(next_batch(&rx, policy, &|| false), Some(vec![3, 4]));
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(tx);
        assert_eq!(next_batch(&rx, policy, &|| false), None);
    }

    #[test]
    fn batch_waits_for_announced_work_up_to_the_delay() {
        let (tx, rx) = crossbeam_channel::unbounded();
        tx.send(0).unwrap();
        let policy = BatchPolicy {
            max_batch: 8,
            max_delay: Duration::from_millis(300),
        };
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(1).unwrap();
            tx
        });
        let batch = next_batch(&rx, policy, &|| true).unwrap();
        let _tx = sender.join().unwrap();
        assert_eq!(batch, vec![0, 1]);
    }

    #[test]
    fn admission_counts_and_releases() {
        let gate = Admission::new(3, IntGauge::new("g", "g").unwrap());
        let a = gate.try_acquire(2).unwrap();
        assert!(gate.try_acquire(2).is_none());
        let b = gate.try_acquire(1).unwrap();
        assert_eq!(gate.used(), 3);
        drop(a);
        assert_eq!(gate.used(), 1);
        drop(b);
        assert_eq!(gate.used(), 0);
    }
}
