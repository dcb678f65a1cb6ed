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
//!   [`Admission`] is a tokio semaphore that never waits, mirrored into a
//!   gauge; the server admits requests with it too.
//! * **Decoding ahead of inference.** A pool of CPU threads decodes and
//!   resizes images in parallel and hands 8-bit rasters to the batcher through
//!   a bounded channel, so at most about one batch waits in memory; the
//!   batcher normalises them straight into the batch's float tensor. Each
//!   decode first takes its decoded size from a byte budget
//!   ([`crate::budget`]), from the image header, before the decoder
//!   allocates; it gives the rest back after the resize and the remainder when
//!   the raster is copied into its batch.
//! * **Panics.** Decoding, resizing and inference run under `catch_unwind`:
//!   a panic answers its item (or batch) with an error and the thread goes
//!   on. A decode thread that dies anyway is replaced. [`Pipeline::healthy`]
//!   says whether every stage still has a live thread; readiness follows it.
//! * **Batch formation.** A batcher thread per session takes what is queued,
//!   up to the maximum batch size. It waits up to the maximum queue delay for
//!   more only while more work is known to be on its way (images still being
//!   decoded), so a lone request never pays the delay.
//! * **Dropping dead work.** An item whose caller has gone (client disconnected,
//!   request failed or timed out: its reply channel is closed) or whose
//!   deadline has passed is dropped before it costs inference time.
//! * **Backends.** A batcher hands its batch to a [`Backend`] and answers
//!   each item with its own embedding, in order, or with the batch's error.
//!   ONNX Runtime sessions are the backends when serving; the tests here use
//!   fakes, so batching is tested without ONNX Runtime.
//!
//! The pattern follows text-embeddings-inference's queue and Triton's dynamic
//! batcher (max batch size, max queue delay).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use prometheus::IntGauge;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::budget::{MemoryBudget, NoRoom, Reservation};
use crate::decode;
use crate::metrics::Metrics;
use crate::preprocess::Transform;
use crate::raster::{DecodeError, DecodeLimits, Footprint, Image8};
use crate::window::Windowing;

/// Failure of an inference call.
#[derive(Debug, thiserror::Error)]
#[error("inference failed: {0}")]
pub struct InferenceError(pub String);

/// One tower's model as a batcher drives it: a batch in, one embedding per
/// item out. ONNX Runtime sessions implement it ([`crate::backend`]); so do
/// the fakes of this module's tests, which is how batching is tested without
/// ONNX Runtime.
///
/// Each batcher thread owns its backend, hence `&mut self`.
pub trait Backend: Send + 'static {
    /// A batch's input, as the batcher assembles it.
    type Batch;

    /// Embeds every item of `batch`: one vector per item, in the items' order.
    fn embed(&mut self, batch: Self::Batch) -> Result<Vec<Vec<f32>>, InferenceError>;
}

/// A batch for the image tower. Debug output of batches and jobs shows
/// sizes, never content: pixels, base64 and token ids are patient data.
#[derive(derive_more::Debug)]
#[debug("ImageBatch({n} images)")]
pub struct ImageBatch {
    /// `n` preprocessed images, each `3 * size * size` floats (CHW), one after
    /// the other.
    pub pixels: Vec<f32>,
    /// Images in the batch.
    pub n: usize,
}

/// A batch for the text tower.
#[derive(derive_more::Debug)]
#[debug("TextBatch({n} texts)")]
pub struct TextBatch {
    /// `n` rows of `context_length` token ids, one after the other.
    pub ids: Vec<i64>,
    /// `n` rows of `context_length` attention mask values.
    pub mask: Vec<i64>,
    /// Texts in the batch.
    pub n: usize,
}

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
    /// A fault of ours (a panic caught while processing the item).
    #[error("internal failure while processing the item")]
    Failed,
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
#[derive(derive_more::Debug)]
#[debug("ImageJob({} base64 bytes)", base64.len())]
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
    /// The raster's share of the decoded-bytes budget, given back when the
    /// raster is copied into its batch (or dropped).
    _held: Option<Reservation>,
}

/// A tokenized text.
#[derive(derive_more::Debug)]
#[debug("TextJob({} tokens)", ids.len())]
pub struct TextJob {
    /// `context_length` ids.
    pub ids: Vec<i64>,
    /// `context_length` mask values.
    pub mask: Vec<i64>,
    /// Bookkeeping.
    pub meta: JobMeta,
}

/// A counting admission gate: at most `capacity` units held at once, mirrored
/// into a gauge. Taking units never waits: past the capacity it fails at once,
/// which the server answers with 429.
#[derive(Debug)]
pub struct Admission {
    permits: Arc<Semaphore>,
    capacity: usize,
    gauge: IntGauge,
}

/// Units held from an [`Admission`]; released, and taken off the gauge, on drop.
#[derive(Debug)]
pub struct Permit {
    permit: OwnedSemaphorePermit,
    gauge: IntGauge,
}

impl Admission {
    /// A gate of `capacity` units, mirrored into `gauge`.
    pub fn new(capacity: usize, gauge: IntGauge) -> Arc<Self> {
        let capacity = capacity.min(Semaphore::MAX_PERMITS);
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
            gauge,
        })
    }

    /// Takes `n` units if they fit.
    pub fn try_acquire(&self, n: usize) -> Option<Permit> {
        let permit = self
            .permits
            .clone()
            .try_acquire_many_owned(u32::try_from(n).ok()?)
            .ok()?;
        self.gauge.add(n as i64);
        Some(Permit {
            permit,
            gauge: self.gauge.clone(),
        })
    }

    /// Units held now.
    pub fn used(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gauge.sub(self.permit.num_permits() as i64);
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

/// Live threads of each stage, for readiness.
#[derive(Debug)]
struct Health {
    decoders: AtomicUsize,
    image_batchers: AtomicUsize,
    text_batchers: AtomicUsize,
    needs_image: bool,
    needs_text: bool,
    /// Tests turn replacement off to break the pool.
    #[cfg(test)]
    no_respawn: std::sync::atomic::AtomicBool,
}

impl Health {
    fn healthy(&self) -> bool {
        let alive = |n: &AtomicUsize| n.load(Ordering::Acquire) > 0;
        alive(&self.decoders)
            && (!self.needs_image || alive(&self.image_batchers))
            && (!self.needs_text || alive(&self.text_batchers))
    }

    fn respawn(&self) -> bool {
        #[cfg(test)]
        if self.no_respawn.load(Ordering::Acquire) {
            return false;
        }
        true
    }
}

/// Counts a thread out of its stage when it ends, however it ends.
struct Alive(Arc<Health>, fn(&Health) -> &AtomicUsize);

impl Drop for Alive {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::AcqRel);
    }
}

/// Join handles of the pipeline's threads (replacements included).
type Threads = Arc<Mutex<Vec<JoinHandle<()>>>>;

/// The running batching pipeline of both towers.
pub struct Pipeline {
    decode_tx: std::sync::RwLock<Option<Sender<ImageJob>>>,
    text_tx: std::sync::RwLock<Option<Sender<TextJob>>>,
    images_decoding: Arc<AtomicUsize>,
    threads: Threads,
    health: Arc<Health>,
    /// The decoded-bytes budget.
    pub decoded_budget: Arc<MemoryBudget>,
    /// Admission of images.
    pub image_admission: Arc<Admission>,
    /// Admission of texts.
    pub text_admission: Arc<Admission>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("healthy", &self.healthy())
            .finish_non_exhaustive()
    }
}

/// What the pipeline needs to start: `I` and `T` are the image and text
/// towers' backends (ONNX Runtime sessions when serving).
pub struct PipelineParts<I, T> {
    /// One backend per image session.
    pub image_models: Vec<I>,
    /// One backend per text session.
    pub text_models: Vec<T>,
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
    /// The decoded-bytes budget.
    pub max_decoded_bytes: u64,
}

/// What every decode thread shares; the last thread to end drops it, which
/// closes the image batchers' channel.
struct DecodeCtx {
    rx: Receiver<ImageJob>,
    tx: Sender<ReadyImage>,
    transform: Arc<Transform>,
    limits: DecodeLimits,
    windowing: Windowing,
    metrics: Metrics,
    decoding: Arc<AtomicUsize>,
    budget: Arc<MemoryBudget>,
    health: Arc<Health>,
    threads: Threads,
}

/// Starts decode thread `index`.
fn spawn_decoder(ctx: Arc<DecodeCtx>, index: usize) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("decode-{index}"))
        .spawn(move || {
            let exit = DecoderExit { ctx, index };
            decode_loop(&exit.ctx);
        })
}

/// Replaces a decode thread that dies of a panic; counts it out of the pool
/// when it ends otherwise (or cannot be replaced).
struct DecoderExit {
    ctx: Arc<DecodeCtx>,
    index: usize,
}

impl Drop for DecoderExit {
    fn drop(&mut self) {
        let ctx = &self.ctx;
        if std::thread::panicking() {
            ctx.metrics.panics.with_label_values(&["thread"]).inc();
            if ctx.health.respawn() {
                match spawn_decoder(ctx.clone(), self.index) {
                    Ok(handle) => {
                        tracing::error!(thread = self.index, "a decode thread panicked; replaced");
                        ctx.threads
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(handle);
                        return;
                    }
                    Err(e) => {
                        tracing::error!(thread = self.index, error = %e, "a decode thread panicked and could not be replaced");
                    }
                }
            } else {
                tracing::error!(thread = self.index, "a decode thread panicked");
            }
        }
        ctx.health.decoders.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pipeline {
    /// Starts the decode pool and one batcher thread per session.
    pub fn start<I, T>(parts: PipelineParts<I, T>, metrics: &Metrics) -> std::io::Result<Self>
    where
        I: Backend<Batch = ImageBatch>,
        T: Backend<Batch = TextBatch>,
    {
        let (decode_tx, decode_rx) = crossbeam_channel::unbounded::<ImageJob>();
        let (image_tx, image_rx) =
            crossbeam_channel::bounded::<ReadyImage>(parts.image_policy.max_batch);
        let (text_tx, text_rx) = crossbeam_channel::unbounded::<TextJob>();
        let images_decoding = Arc::new(AtomicUsize::new(0));
        let threads: Threads = Arc::default();
        let decode_threads = parts.decode_threads.max(1);
        let health = Arc::new(Health {
            decoders: AtomicUsize::new(decode_threads),
            image_batchers: AtomicUsize::new(parts.image_models.len()),
            text_batchers: AtomicUsize::new(parts.text_models.len()),
            needs_image: !parts.image_models.is_empty(),
            needs_text: !parts.text_models.is_empty(),
            #[cfg(test)]
            no_respawn: std::sync::atomic::AtomicBool::new(false),
        });
        let budget = MemoryBudget::new(parts.max_decoded_bytes, metrics.decoded_bytes.clone());
        let push = |h| threads.lock().unwrap_or_else(|p| p.into_inner()).push(h);

        let transform = Arc::new(parts.transform);
        let ctx = Arc::new(DecodeCtx {
            rx: decode_rx,
            tx: image_tx,
            transform: transform.clone(),
            limits: parts.limits,
            windowing: parts.windowing,
            metrics: metrics.clone(),
            decoding: images_decoding.clone(),
            budget: budget.clone(),
            health: health.clone(),
            threads: threads.clone(),
        });
        for i in 0..decode_threads {
            push(spawn_decoder(ctx.clone(), i)?);
        }
        drop(ctx);

        for (i, model) in parts.image_models.into_iter().enumerate() {
            let rx = image_rx.clone();
            let metrics = metrics.clone();
            let decoding = images_decoding.clone();
            let policy = parts.image_policy;
            let transform = transform.clone();
            let alive = Alive(health.clone(), |h| &h.image_batchers);
            push(
                std::thread::Builder::new()
                    .name(format!("infer-image-{i}"))
                    .spawn(move || {
                        let _alive = alive;
                        image_loop(rx, model, &transform, policy, &metrics, &decoding)
                    })?,
            );
        }
        for (i, model) in parts.text_models.into_iter().enumerate() {
            let rx = text_rx.clone();
            let metrics = metrics.clone();
            let policy = parts.text_policy;
            let alive = Alive(health.clone(), |h| &h.text_batchers);
            push(
                std::thread::Builder::new()
                    .name(format!("infer-text-{i}"))
                    .spawn(move || {
                        let _alive = alive;
                        text_loop(rx, model, policy, &metrics)
                    })?,
            );
        }

        Ok(Self {
            decode_tx: std::sync::RwLock::new(Some(decode_tx)),
            text_tx: std::sync::RwLock::new(Some(text_tx)),
            images_decoding,
            threads,
            health,
            decoded_budget: budget,
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

    /// Whether the pipeline can serve: every stage (decoding, each tower's
    /// batching) has a live thread.
    pub fn healthy(&self) -> bool {
        self.health.healthy()
    }

    /// Closes and waits for the threads (and their replacements) to finish.
    pub fn join(self) {
        self.close();
        loop {
            let next = self.threads.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match next {
                Some(t) => {
                    let _ = t.join();
                }
                None => break,
            }
        }
    }
}

/// Test hooks: base64 strings (never valid base64, and compiled into tests
/// only) that make a decode thread panic at a chosen stage.
#[cfg(test)]
pub(crate) mod hooks {
    /// Panics inside decoding.
    pub const PANIC_IN_DECODE: &str = "test-hook:panic-in-decode";
    /// Panics inside the resize.
    pub const PANIC_IN_RESIZE: &str = "test-hook:panic-in-resize";
    /// Panics in the decode loop itself, killing the thread.
    pub const PANIC_IN_THREAD: &str = "test-hook:panic-in-thread";
}

/// Takes an image off the "on its way to the batcher" count when dropped.
struct OnItsWay<'a>(&'a AtomicUsize);

impl Drop for OnItsWay<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Bytes a decode holds at its peak, from the header: the decoder's output,
/// its conversion to 8 bits (or, for 16-bit and alpha formats, the copy the
/// conversion makes), and the resize's intermediate (`side` columns by the
/// image's rows, RGB at most).
pub fn raster_cost(fp: Footprint, side: u32) -> u64 {
    let bpp = fp.bytes_per_pixel;
    fp.pixels()
        .saturating_mul(bpp + bpp.max(3))
        .saturating_add(u64::from(side) * u64::from(fp.height) * 3)
}

fn decode_loop(ctx: &DecodeCtx) {
    let metrics = &ctx.metrics;
    for job in &ctx.rx {
        let on_its_way = OnItsWay(&ctx.decoding);
        #[cfg(test)]
        if job.base64 == hooks::PANIC_IN_THREAD {
            panic!("test hook: decode thread panic");
        }
        let ImageJob { base64, meta } = job;
        // Dead work costs nothing: skip decoding it.
        if meta.abandoned() {
            metrics
                .dropped
                .with_label_values(&["image", "cancelled"])
                .inc();
            continue;
        }
        if Instant::now() >= meta.deadline {
            metrics
                .dropped
                .with_label_values(&["image", "expired"])
                .inc();
            drop(on_its_way);
            let _ = meta.reply.send(Err(ItemError::Expired));
            continue;
        }
        let started = Instant::now();
        let result = decode_one(ctx, base64, &meta);
        metrics
            .decode_duration
            .observe(started.elapsed().as_secs_f64());
        // No longer "on its way" before it is handed over: a batcher that
        // wakes for this very image must not wait for it again (that cost a
        // whole queue delay per image at one client).
        drop(on_its_way);
        match result {
            Ok((raster, held)) => {
                // Blocks while the batcher is a full batch behind: back-pressure
                // bounds the images held in memory.
                let ready = ReadyImage {
                    raster,
                    meta,
                    _held: held,
                };
                if ctx.tx.send(ready).is_err() {
                    return;
                }
            }
            Err(ItemError::Expired) if meta.abandoned() => {
                metrics
                    .dropped
                    .with_label_values(&["image", "cancelled"])
                    .inc();
            }
            Err(e) => {
                match &e {
                    ItemError::Decode(d) => {
                        metrics.decode_errors.with_label_values(&[d.label()]).inc();
                    }
                    ItemError::Expired => {
                        metrics
                            .dropped
                            .with_label_values(&["image", "expired"])
                            .inc();
                    }
                    _ => {}
                }
                let _ = meta.reply.send(Err(e));
            }
        }
    }
}

/// Decodes and resizes one image under `catch_unwind`, holding its share of
/// the decoded-bytes budget (waiting for room within the item's deadline).
/// A panic in decoding answers 400 (the input drove the decoder there, as
/// with DICOM); one in the resize, of already validated pixels, is ours (500).
fn decode_one(
    ctx: &DecodeCtx,
    mut base64: String,
    meta: &JobMeta,
) -> Result<(Image8, Option<Reservation>), ItemError> {
    let side = ctx
        .transform
        .size
        .max(ctx.transform.standardize.map_or(0, |s| s.size));
    let mut held: Option<Reservation> = None;
    let mut no_room = None;
    #[cfg(test)]
    let hook = base64.clone();
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        #[cfg(test)]
        if hook == hooks::PANIC_IN_DECODE {
            panic!("test hook: decoder panic");
        }
        #[cfg(test)]
        if hook == hooks::PANIC_IN_RESIZE {
            // A valid raster, for the resize to panic on.
            return Ok(Image8 {
                width: 1,
                height: 1,
                channels: crate::raster::Channels::Gray,
                data: vec![0],
            });
        }
        let text = std::mem::take(&mut base64);
        let bytes = decode::decode_base64(&text)?;
        drop(text);
        let mut reserve = |fp: Footprint| {
            let bytes = raster_cost(fp, side);
            let budget = &ctx.budget;
            let full = budget.used() + bytes > budget.total();
            let waited = Instant::now();
            match budget.acquire(bytes, meta.deadline, &|| meta.abandoned()) {
                Ok(r) => {
                    if full {
                        ctx.metrics
                            .decoded_wait
                            .observe(waited.elapsed().as_secs_f64());
                    }
                    held = Some(r);
                    Ok(())
                }
                Err(NoRoom::Never) => Err(DecodeError::OverBudget {
                    width: fp.width,
                    height: fp.height,
                    bytes,
                    budget: budget.total(),
                }),
                Err(other) => {
                    no_room = Some(other);
                    Err(DecodeError::Corrupt("no room to decode".into()))
                }
            }
        };
        decode::decode_reserving(&bytes, &ctx.limits, &ctx.windowing, &mut reserve)
    }));
    if no_room.is_some() {
        return Err(ItemError::Expired);
    }
    let img = match decoded {
        Ok(r) => r?,
        Err(_) => {
            ctx.metrics.panics.with_label_values(&["decode"]).inc();
            tracing::error!("image decoder panicked");
            return Err(ItemError::Decode(DecodeError::Corrupt(
                "decoder failure".into(),
            )));
        }
    };
    let resized = catch_unwind(AssertUnwindSafe(|| {
        #[cfg(test)]
        if hook == hooks::PANIC_IN_RESIZE {
            panic!("test hook: resize panic");
        }
        ctx.transform.resize(&img)
    }));
    drop(img);
    match resized {
        Ok(Ok(raster)) => {
            if let Some(h) = held.as_mut() {
                h.shrink_to(raster.data.len() as u64);
            }
            Ok((raster, held))
        }
        Ok(Err(e)) => Err(ItemError::Decode(e)),
        Err(_) => {
            ctx.metrics.panics.with_label_values(&["resize"]).inc();
            tracing::error!("image resize panicked");
            Err(ItemError::Failed)
        }
    }
}

/// Answers every item of a batch: its own embedding, in order, or the
/// batch's error.
fn finish(metas: Vec<JobMeta>, result: Result<Vec<Vec<f32>>, String>) {
    match result {
        Ok(rows) => {
            for (meta, row) in metas.into_iter().zip(rows) {
                let _ = meta.reply.send(Ok(row));
            }
        }
        Err(e) => {
            for meta in metas {
                let _ = meta.reply.send(Err(ItemError::Inference(e.clone())));
            }
        }
    }
}

/// Runs one batch through a tower, timing it, counting what it embedded and
/// answering every item of the batch. A backend that answers with another
/// number of embeddings than items fails the whole batch.
fn infer<B: Backend>(
    tower: &str,
    backend: &mut B,
    batch: B::Batch,
    metas: Vec<JobMeta>,
    metrics: &Metrics,
) {
    let n = metas.len();
    let started = Instant::now();
    let result = match catch_unwind(AssertUnwindSafe(|| backend.embed(batch))) {
        Ok(r) => r,
        Err(_) => {
            metrics.panics.with_label_values(&["inference"]).inc();
            Err(InferenceError("the backend panicked".into()))
        }
    };
    metrics
        .inference_duration
        .with_label_values(&[tower])
        .observe(started.elapsed().as_secs_f64());
    let result = result.map_err(|e| e.to_string()).and_then(|rows| {
        if rows.len() == n {
            Ok(rows)
        } else {
            Err(InferenceError(format!("{} embeddings for a batch of {n}", rows.len())).to_string())
        }
    });
    match &result {
        Ok(_) => metrics.items.with_label_values(&[tower]).inc_by(n as u64),
        Err(e) => tracing::error!(tower, batch = n, error = %e, "inference failed"),
    }
    finish(metas, result);
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

/// One tower's batcher: until its channel is closed and empty, takes the
/// next batch, drops dead work, assembles the rest into the backend's input
/// and answers every item.
fn batch_loop<T: Item, B: Backend>(
    tower: &str,
    rx: &Receiver<T>,
    backend: &mut B,
    policy: BatchPolicy,
    more_coming: &dyn Fn() -> bool,
    metrics: &Metrics,
    assemble: impl Fn(Vec<T>) -> (B::Batch, Vec<JobMeta>),
) {
    while let Some(batch) = next_batch(rx, policy, more_coming) {
        let batch = keep_live(batch, tower, metrics);
        if batch.is_empty() {
            continue;
        }
        observe_start(
            &batch.iter().map(Item::meta).collect::<Vec<_>>(),
            tower,
            metrics,
        );
        let (input, metas) = assemble(batch);
        infer(tower, backend, input, metas, metrics);
    }
}

/// Normalises ready images straight into one batch tensor.
fn image_batch(items: Vec<ReadyImage>, transform: &Transform) -> (ImageBatch, Vec<JobMeta>) {
    let n = items.len();
    let mut pixels = Vec::with_capacity(n * transform.tensor_len());
    let mut metas = Vec::with_capacity(n);
    for item in items {
        transform.normalize_into(&item.raster, &mut pixels);
        metas.push(item.meta);
    }
    (ImageBatch { pixels, n }, metas)
}

/// Concatenates tokenized texts into one batch.
fn text_batch(items: Vec<TextJob>) -> (TextBatch, Vec<JobMeta>) {
    let n = items.len();
    let context = items.first().map_or(0, |t| t.ids.len());
    let mut batch = TextBatch {
        ids: Vec::with_capacity(n * context),
        mask: Vec::with_capacity(n * context),
        n,
    };
    let mut metas = Vec::with_capacity(n);
    for item in items {
        batch.ids.extend_from_slice(&item.ids);
        batch.mask.extend_from_slice(&item.mask);
        metas.push(item.meta);
    }
    (batch, metas)
}

fn image_loop<B: Backend<Batch = ImageBatch>>(
    rx: Receiver<ReadyImage>,
    mut backend: B,
    transform: &Transform,
    policy: BatchPolicy,
    metrics: &Metrics,
    decoding: &AtomicUsize,
) {
    // Images still being decoded are on their way: worth waiting for.
    let more_coming = || decoding.load(Ordering::Acquire) > 0;
    batch_loop(
        "image",
        &rx,
        &mut backend,
        policy,
        &more_coming,
        metrics,
        |items| image_batch(items, transform),
    );
}

fn text_loop<B: Backend<Batch = TextBatch>>(
    rx: Receiver<TextJob>,
    mut backend: B,
    policy: BatchPolicy,
    metrics: &Metrics,
) {
    // Texts are tokenized before they are queued: nothing is on its way.
    batch_loop(
        "text",
        &rx,
        &mut backend,
        policy,
        &|| false,
        metrics,
        text_batch,
    );
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
    fn debug_output_shows_sizes_not_content() {
        let (job, _reply) = text_job(4242, later());
        let (reply, _rx) = oneshot::channel();
        let image = ImageJob {
            base64: "U0VDUkVU".into(),
            meta: JobMeta {
                admitted: Instant::now(),
                deadline: later(),
                reply,
            },
        };
        let text = format!(
            "{job:?} {image:?} {:?} {:?}",
            ImageBatch {
                pixels: vec![0.4242; 3],
                n: 1
            },
            TextBatch {
                ids: vec![4242, 0],
                mask: vec![1, 0],
                n: 1
            }
        );
        assert!(
            !text.contains("4242") && !text.contains("U0VDUkVU"),
            "{text}"
        );
    }

    #[test]
    fn admission_counts_and_releases() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let gate = Admission::new(3, gauge.clone());
        let a = gate.try_acquire(2).unwrap();
        assert!(gate.try_acquire(2).is_none());
        let b = gate.try_acquire(1).unwrap();
        assert_eq!((gate.used(), gauge.get()), (3, 3));
        drop(a);
        assert_eq!((gate.used(), gauge.get()), (1, 1));
        drop(b);
        assert_eq!((gate.used(), gauge.get()), (0, 0));
        // More than the capacity, or than a semaphore counts, never fits.
        assert!(gate.try_acquire(4).is_none());
        assert!(gate.try_acquire(usize::MAX).is_none());
        let all = gate.try_acquire(gate.capacity()).unwrap();
        assert!(gate.try_acquire(1).is_none());
        drop(all);
        assert_eq!((gate.used(), gauge.get()), (0, 0));
    }

    /// Where a test item's answer arrives.
    type Answer = oneshot::Receiver<Result<Vec<f32>, ItemError>>;

    /// Text `i` has ids `[i, 0]`; the fake text tower embeds it as `[i]`.
    fn text_job(i: i64, deadline: Instant) -> (TextJob, Answer) {
        let (reply, rx) = oneshot::channel();
        let job = TextJob {
            ids: vec![i, 0],
            mask: vec![1, 0],
            meta: JobMeta {
                admitted: Instant::now(),
                deadline,
                reply,
            },
        };
        (job, rx)
    }

    /// A closed queue holding `n` live text jobs (ids 0..n), with their replies.
    fn queued(n: i64) -> (Receiver<TextJob>, Vec<Answer>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let replies = (0..n)
            .map(|i| {
                let (job, reply) = text_job(i, later());
                tx.send(job).unwrap();
                reply
            })
            .collect();
        (rx, replies)
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(600)
    }

    /// The answer of one item, once the batcher sent it.
    fn answer(rx: Answer) -> Result<Vec<f32>, ItemError> {
        rx.blocking_recv()
            .expect("the batcher answers every live item")
    }

    /// A text tower that embeds each text as its first id, records the size
    /// of every batch it runs, and fails (or miscounts) when told to.
    #[derive(Default)]
    struct FakeText {
        batches: Arc<std::sync::Mutex<Vec<usize>>>,
        fail: bool,
        drop_last_row: bool,
    }

    impl Backend for FakeText {
        type Batch = TextBatch;

        fn embed(&mut self, batch: TextBatch) -> Result<Vec<Vec<f32>>, InferenceError> {
            assert_eq!(batch.ids.len(), batch.mask.len());
            self.batches.lock().unwrap().push(batch.n);
            if self.fail {
                return Err(InferenceError("device lost".into()));
            }
            let context = batch.ids.len() / batch.n;
            let mut rows: Vec<Vec<f32>> = batch
                .ids
                .chunks_exact(context)
                .map(|ids| vec![ids[0] as f32])
                .collect();
            if self.drop_last_row {
                rows.pop();
            }
            Ok(rows)
        }
    }

    /// Runs a text batcher over what is queued until the channel is closed.
    fn run_texts(fake: &mut FakeText, rx: &Receiver<TextJob>, max_batch: usize, metrics: &Metrics) {
        let policy = BatchPolicy {
            max_batch,
            max_delay: Duration::from_secs(10),
        };
        batch_loop("text", rx, fake, policy, &|| false, metrics, text_batch);
    }

    #[test]
    fn batches_form_up_to_the_max_size_and_answer_in_order() {
        let (rx, replies) = queued(7);
        let mut fake = FakeText::default();
        let started = Instant::now();
        run_texts(&mut fake, &rx, 3, &Metrics::new());
        // Nothing was on its way: no queue delay was waited.
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(*fake.batches.lock().unwrap(), vec![3, 3, 1]);
        for (i, reply) in replies.into_iter().enumerate() {
            assert_eq!(answer(reply).unwrap(), vec![i as f32]);
        }
    }

    #[test]
    fn waits_for_work_on_its_way_up_to_the_queue_delay_only() {
        let delay = Duration::from_secs(1);
        let coming = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (tx, rx) = crossbeam_channel::unbounded();
        let fake = FakeText::default();
        let batches = fake.batches.clone();
        let batcher = std::thread::spawn({
            let coming = coming.clone();
            move || {
                let mut fake = fake;
                let policy = BatchPolicy {
                    max_batch: 8,
                    max_delay: delay,
                };
                let more_coming = || coming.load(Ordering::Acquire);
                batch_loop(
                    "text",
                    &rx,
                    &mut fake,
                    policy,
                    &more_coming,
                    &Metrics::new(),
                    text_batch,
                );
            }
        });

        // Work announced and arriving within the delay joins the batch.
        let (a, ra) = text_job(0, later());
        let (b, rb) = text_job(1, later());
        tx.send(a).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        tx.send(b).unwrap();
        assert_eq!(answer(ra).unwrap(), vec![0.0]);
        assert_eq!(answer(rb).unwrap(), vec![1.0]);
        assert_eq!(*batches.lock().unwrap(), vec![2]);

        // Work announced that never comes: the batch runs once the delay is up.
        let (c, rc) = text_job(2, later());
        let sent = Instant::now();
        tx.send(c).unwrap();
        assert_eq!(answer(rc).unwrap(), vec![2.0]);
        let waited = sent.elapsed();
        assert!(waited >= delay && waited < 5 * delay, "{waited:?}");

        // Nothing announced: a lone item does not pay the delay.
        coming.store(false, Ordering::Release);
        let (d, rd) = text_job(3, later());
        let sent = Instant::now();
        tx.send(d).unwrap();
        assert_eq!(answer(rd).unwrap(), vec![3.0]);
        assert!(sent.elapsed() < delay, "{:?}", sent.elapsed());

        drop(tx);
        batcher.join().unwrap();
        assert_eq!(*batches.lock().unwrap(), vec![2, 1, 1]);
    }

    #[test]
    fn expired_and_abandoned_items_are_not_run() {
        let metrics = Metrics::new();
        let (tx, rx) = crossbeam_channel::unbounded();
        // A first batch of dead items only, then a batch with two live ones
        // around a dead one.
        let (expired, expired_reply) = text_job(10, Instant::now());
        let (abandoned, abandoned_reply) = text_job(11, later());
        drop(abandoned_reply);
        let (live0, live0_reply) = text_job(0, later());
        let (expired2, expired2_reply) = text_job(12, Instant::now());
        let (live1, live1_reply) = text_job(1, later());
        for job in [expired, abandoned, live0, expired2, live1] {
            tx.send(job).unwrap();
        }
        drop(tx);
        let mut fake = FakeText::default();
        run_texts(&mut fake, &rx, 2, &metrics);

        // Only the live items reached the backend.
        assert_eq!(*fake.batches.lock().unwrap(), vec![1, 1]);
        assert_eq!(answer(live0_reply).unwrap(), vec![0.0]);
        assert_eq!(answer(live1_reply).unwrap(), vec![1.0]);
        for reply in [expired_reply, expired2_reply] {
            assert!(matches!(answer(reply), Err(ItemError::Expired)));
        }
        let dropped = |reason| metrics.dropped.with_label_values(&["text", reason]).get();
        assert_eq!((dropped("expired"), dropped("cancelled")), (2, 1));
        assert_eq!(metrics.items.with_label_values(&["text"]).get(), 2);
    }

    #[test]
    fn an_inference_error_reaches_every_item_of_the_batch() {
        for (fail, drop_last_row) in [(true, false), (false, true)] {
            let metrics = Metrics::new();
            let (rx, replies) = queued(3);
            let mut fake = FakeText {
                fail,
                drop_last_row,
                ..FakeText::default()
            };
            run_texts(&mut fake, &rx, 3, &metrics);
            assert_eq!(*fake.batches.lock().unwrap(), vec![3]);
            for reply in replies {
                match answer(reply) {
                    Err(ItemError::Inference(msg)) => {
                        assert!(msg.starts_with("inference failed"), "{msg}")
                    }
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(metrics.items.with_label_values(&["text"]).get(), 0);
        }
    }

    /// An image tower that embeds each image as the first value of its
    /// tensor, so a black image gives 0 and a white one 1.
    struct FakeImage {
        tensor_len: usize,
    }

    impl Backend for FakeImage {
        type Batch = ImageBatch;

        fn embed(&mut self, batch: ImageBatch) -> Result<Vec<Vec<f32>>, InferenceError> {
            assert_eq!(batch.pixels.len(), batch.n * self.tensor_len);
            Ok(batch
                .pixels
                .chunks_exact(self.tensor_len)
                .map(|t| vec![t[0]])
                .collect())
        }
    }

    fn png_base64(value: u8) -> String {
        use base64::Engine;
        let img = image::DynamicImage::ImageLuma8(image::ImageBuffer::from_pixel(
            5,
            3,
            image::Luma([value]),
        ));
        let mut png = std::io::Cursor::new(Vec::new());
        img.write_to(&mut png, image::ImageFormat::Png).unwrap();
        base64::engine::general_purpose::STANDARD.encode(png.into_inner())
    }

    /// A pipeline on fake backends: images of 4×4 pixels.
    fn fake_pipeline(decode_threads: usize, max_decoded_bytes: u64) -> (Pipeline, Metrics) {
        let transform = Transform {
            size: 4,
            mean: [0.0; 3],
            std: [1.0; 3],
            standardize: None,
        };
        let tensor_len = transform.tensor_len();
        let policy = BatchPolicy {
            max_batch: 4,
            max_delay: Duration::from_millis(20),
        };
        let metrics = Metrics::new();
        let pipeline = Pipeline::start(
            PipelineParts {
                image_models: vec![FakeImage { tensor_len }],
                text_models: vec![FakeText::default()],
                transform,
                limits: DecodeLimits::default(),
                windowing: Windowing::default(),
                decode_threads,
                image_policy: policy,
                text_policy: policy,
                max_queued_images: 8,
                max_queued_texts: 8,
                max_decoded_bytes,
            },
            &metrics,
        )
        .unwrap();
        (pipeline, metrics)
    }

    /// Submits an image with a deadline; its answer arrives on the receiver.
    fn submit(pipeline: &Pipeline, base64: String, deadline: Instant) -> Answer {
        let (reply, rx) = oneshot::channel();
        pipeline.submit_image(ImageJob {
            base64,
            meta: JobMeta {
                admitted: Instant::now(),
                deadline,
                reply,
            },
        });
        rx
    }

    /// The whole pipeline (decode pool, both batchers, admission) without
    /// ONNX Runtime: each image and text gets its own answer, a bad image
    /// fails alone, and closing lets every thread finish.
    #[test]
    fn the_pipeline_decodes_batches_and_answers_with_fake_backends() {
        let (pipeline, metrics) = fake_pipeline(2, 512 << 20);
        assert!(pipeline.healthy());
        assert_eq!(pipeline.image_admission.capacity(), 8);
        let permit = pipeline.image_admission.try_acquire(3).unwrap();
        let queued = |tower| metrics.queue_depth.with_label_values(&[tower]).get();
        assert_eq!(queued("image"), 3);

        let image = |base64: String| submit(&pipeline, base64, later());
        let black = image(png_base64(0));
        let bad = image("not base64 !".into());
        let white = image(png_base64(255));
        let (text, text_reply) = text_job(7, later());
        pipeline.submit_text(text);

        assert_eq!(answer(black).unwrap(), vec![0.0]);
        assert_eq!(answer(white).unwrap(), vec![1.0]);
        assert!(matches!(
            answer(bad),
            Err(ItemError::Decode(DecodeError::Base64))
        ));
        assert_eq!(answer(text_reply).unwrap(), vec![7.0]);
        assert_eq!(
            metrics.decode_errors.with_label_values(&["base64"]).get(),
            1
        );
        drop(permit);
        assert_eq!((pipeline.image_admission.used(), queued("image")), (0, 0));
        pipeline.join();
    }

    /// A panic while decoding or resizing answers its item (400 and 500) and
    /// the thread goes on; a decode thread that dies is replaced, so the one
    /// thread of the pool keeps serving and the pipeline stays healthy.
    #[test]
    fn panics_are_answered_and_a_dead_decode_thread_is_replaced() {
        let (pipeline, metrics) = fake_pipeline(1, 512 << 20);
        let panics = |stage| metrics.panics.with_label_values(&[stage]).get();

        let decode = submit(&pipeline, hooks::PANIC_IN_DECODE.into(), later());
        match answer(decode) {
            Err(ItemError::Decode(DecodeError::Corrupt(msg))) => {
                assert_eq!(msg, "decoder failure")
            }
            other => panic!("{other:?}"),
        }
        let resize = submit(&pipeline, hooks::PANIC_IN_RESIZE.into(), later());
        assert!(matches!(answer(resize), Err(ItemError::Failed)));
        assert_eq!((panics("decode"), panics("resize")), (1, 1));
        assert_eq!(pipeline.decoded_budget.used(), 0, "budget leaked");

        // The thread itself dies: its item is lost (the waiter sees the
        // pipeline drop it), the thread is replaced and serves the next one.
        let lost = submit(&pipeline, hooks::PANIC_IN_THREAD.into(), later());
        assert!(lost.blocking_recv().is_err());
        let white = submit(&pipeline, png_base64(255), later());
        assert_eq!(answer(white).unwrap(), vec![1.0]);
        assert_eq!(panics("thread"), 1);
        assert!(pipeline.healthy());
        // Nothing is left "on its way" (a batcher would wait for it).
        assert_eq!(pipeline.images_decoding.load(Ordering::Acquire), 0);
        pipeline.join();
    }

    /// When a dead decode thread cannot be replaced and it was the last one,
    /// the pipeline can no longer serve images: it says so (readiness 503).
    #[test]
    fn a_pool_without_live_decode_threads_is_unhealthy() {
        let (pipeline, _metrics) = fake_pipeline(1, 512 << 20);
        assert!(pipeline.healthy());
        pipeline
            .health
            .no_respawn
            .store(true, std::sync::atomic::Ordering::Release);
        let lost = submit(&pipeline, hooks::PANIC_IN_THREAD.into(), later());
        assert!(lost.blocking_recv().is_err());
        let until = Instant::now() + Duration::from_secs(10);
        while pipeline.healthy() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!pipeline.healthy());
        pipeline.join();
    }

    /// Decoded rasters count against their budget from the header on: an
    /// image that alone needs more than the budget is refused (400), one that
    /// finds no room waits, and past its deadline expires (408); the budget
    /// is given back once the raster is in its batch.
    #[test]
    fn decoded_rasters_take_the_budget_before_they_are_decoded() {
        // A 5×3 gray PNG costs 15 × (1 + 3) + 4 × 3 × 3 = 96 bytes.
        let cost = raster_cost(
            Footprint {
                width: 5,
                height: 3,
                bytes_per_pixel: 1,
            },
            4,
        );
        assert_eq!(cost, 96);
        let (small, _) = fake_pipeline(1, cost - 1);
        let refused = submit(&small, png_base64(0), later());
        match answer(refused) {
            Err(ItemError::Decode(e @ DecodeError::OverBudget { .. })) => {
                assert_eq!(e.label(), "too_large")
            }
            other => panic!("{other:?}"),
        }
        small.join();

        let (pipeline, metrics) = fake_pipeline(1, cost);
        let budget = pipeline.decoded_budget.clone();
        let held = budget.acquire(1, later(), &|| false).unwrap();
        let soon = Instant::now() + Duration::from_millis(300);
        let expired = submit(&pipeline, png_base64(0), soon);
        assert!(matches!(answer(expired), Err(ItemError::Expired)));
        assert!(Instant::now() >= soon);

        let waiting = submit(&pipeline, png_base64(255), later());
        std::thread::sleep(Duration::from_millis(100));
        drop(held);
        assert_eq!(answer(waiting).unwrap(), vec![1.0]);
        assert_eq!(budget.used(), 0, "budget leaked");
        assert_eq!(metrics.decoded_bytes.get(), 0);
        assert!(metrics.decoded_wait.get_sample_count() >= 1);
        pipeline.join();
    }
}
