//! The worker's configuration: every flag also reads an environment variable,
//! so the same binary is configured by the operator's pod spec, a ConfigMap, or
//! a shell. Defaults are sized for one CPU host serving the test model; GPU
//! deployments raise the batch sizes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
pub use medembed_api::serve::LogFormat;
use medembed_api::workers::env;
pub use medembed_api::ExecutionProvider;
use medembed_api::{ResponseFormat, WorkerSettings};

/// Whether to apply the managed service's 512 px + JPEG standardisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StandardizeMode {
    /// As the model directory's config says.
    Model,
    /// Always (bit-level parity with the managed service's preprocessing).
    On,
    /// Never (full detail).
    Off,
}

/// Serves a MedImageInsight-style embedding model over the managed endpoint's scoring API.
#[derive(Debug, Clone, Parser)]
#[command(name = "medembed-worker", version, about)]
pub struct WorkerConfig {
    /// Model directory: image and text ONNX graphs, tokenizer.json, medembed-model.json.
    #[arg(long, env = env::MODEL_DIR)]
    pub model_dir: PathBuf,

    /// Address to listen on.
    #[arg(long, env = env::LISTEN, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Serving certificate chain (PEM): with `--tls-key-file`, the worker
    /// serves HTTPS only (plain HTTP is refused). Both files are reloaded
    /// when they change (a mounted TLS Secret), without a restart.
    #[arg(long, env = env::TLS_CERT_FILE, requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// Serving private key (PEM).
    #[arg(long, env = env::TLS_KEY_FILE, requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// How often the certificate files are checked for changes, in
    /// milliseconds.
    #[arg(long, env = "MEDEMBED_TLS_RELOAD_MS", default_value_t = 5000)]
    pub tls_reload_ms: u64,

    /// Path of ONNX Runtime's shared library (libonnxruntime.so).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_library: Option<PathBuf>,

    /// Execution provider. A GPU provider that fails to register is a fatal error.
    #[arg(
        long,
        env = env::EXECUTION_PROVIDER,
        value_enum,
        default_value = "cpu"
    )]
    pub execution_provider: ExecutionProvider,

    /// GPU ordinal for the CUDA and TensorRT providers.
    #[arg(long, env = "MEDEMBED_DEVICE_ID", default_value_t = 0)]
    pub device_id: i32,

    /// Directory for TensorRT engine and timing caches (persist it across restarts).
    #[arg(
        long,
        env = env::TRT_CACHE_DIR,
        default_value = "/var/cache/medembed/tensorrt"
    )]
    pub trt_cache_dir: PathBuf,

    /// Let TensorRT build fp16 engines.
    #[arg(long, env = "MEDEMBED_TRT_FP16", default_value_t = false)]
    pub trt_fp16: bool,

    /// Inference sessions per tower (each runs one batch at a time; >1 only helps on a GPU with room).
    #[arg(long, env = env::SESSIONS, default_value_t = 1)]
    pub sessions: usize,

    /// ONNX Runtime intra-op threads per session (0 = number of CPUs).
    #[arg(long, env = "MEDEMBED_INTRA_THREADS", default_value_t = 0)]
    pub intra_threads: usize,

    /// Let ONNX Runtime's intra-op threads spin while waiting for work. Off by
    /// default: spinning threads take the cores the decode threads need (on a
    /// 2-CPU machine at one request at a time, spinning was most of the
    /// worker's CPU). Worth turning on only when inference runs on the CPU
    /// and the CPUs are not needed for decoding.
    #[arg(long, env = "MEDEMBED_ORT_SPINNING", default_value_t = false)]
    pub ort_spinning: bool,

    /// Threads decoding and preprocessing images ahead of inference (0 = number of CPUs).
    #[arg(long, env = "MEDEMBED_DECODE_THREADS", default_value_t = 0)]
    pub decode_threads: usize,

    /// Largest image batch one inference runs.
    #[arg(long, env = env::MAX_BATCH_IMAGES, default_value_t = 16)]
    pub max_batch_images: usize,

    /// Largest text batch one inference runs.
    #[arg(long, env = env::MAX_BATCH_TEXTS, default_value_t = 64)]
    pub max_batch_texts: usize,

    /// Longest a batch waits for more work once it has one item, in milliseconds
    /// (only while more work is known to be on its way).
    #[arg(long, env = env::MAX_QUEUE_DELAY_MS, default_value_t = 5)]
    pub max_queue_delay_ms: u64,

    /// Most images admitted and not yet answered; beyond it requests get 429.
    #[arg(long, env = "MEDEMBED_MAX_QUEUED_IMAGES", default_value_t = 2048)]
    pub max_queued_images: usize,

    /// Most texts admitted and not yet answered; beyond it requests get 429.
    #[arg(long, env = "MEDEMBED_MAX_QUEUED_TEXTS", default_value_t = 16384)]
    pub max_queued_texts: usize,

    /// Most requests processed at once; beyond it requests get 429.
    #[arg(long, env = env::MAX_CONCURRENT_REQUESTS, default_value_t = 256)]
    pub max_concurrent_requests: usize,

    /// Default time budget of a request in milliseconds, when the gateway sets none.
    #[arg(long, env = env::REQUEST_TIMEOUT_MS, default_value_t = 60_000)]
    pub request_timeout_ms: u64,

    /// Largest request body in bytes (413 beyond).
    #[arg(long, env = env::MAX_BODY_BYTES, default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Most request-body bytes held across all requests at once, from reading
    /// to answering, taken as the bytes arrive; a request beyond waits,
    /// unread, for room (up to its deadline). One body at a time may go over
    /// by up to --max-body-bytes so that bodies holding parts of a full budget
    /// do not wait for each other. About 50 chest X-rays' worth by default:
    /// more in memory does not make the decode threads faster.
    #[arg(long, env = "MEDEMBED_MAX_BUFFERED_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_buffered_bytes: usize,

    /// Slowest a request body may arrive, in bytes per second averaged over
    /// the body so far, once the grace period has passed (0 = no minimum). A
    /// body that stalls or trickles below it is refused (408) and its share
    /// of the body budget freed. Time spent waiting for budget does not count.
    #[arg(long, env = env::MIN_BODY_RATE, default_value_t = 64 * 1024)]
    pub min_body_rate: u64,

    /// Time a request body may take before the minimum rate applies, in
    /// milliseconds.
    #[arg(long, env = env::BODY_RATE_GRACE_MS, default_value_t = 10_000)]
    pub body_rate_grace_ms: u64,

    /// Most bytes of decoded (full-size) image rasters held at once across
    /// the decode threads, counted from the image header before the decoder
    /// allocates. An image that alone needs more is refused (400); otherwise
    /// a decode waits for room within its request's deadline.
    #[arg(long, env = env::MAX_DECODED_BYTES, default_value_t = 512 * 1024 * 1024)]
    pub max_decoded_bytes: u64,

    /// Most rows one request may carry.
    #[arg(long, env = env::MAX_ROWS, default_value_t = 1024)]
    pub max_rows: usize,

    /// Most pixels (width × height) a decoded image may have.
    #[arg(long, env = "MEDEMBED_MAX_IMAGE_PIXELS", default_value_t = 40_000_000)]
    pub max_image_pixels: u64,

    /// The managed service's 512 px + JPEG q75 standardisation before preprocessing.
    #[arg(
        long,
        env = "MEDEMBED_STANDARDIZE",
        value_enum,
        default_value = "model"
    )]
    pub standardize: StandardizeMode,

    /// The JSON shape of a successful answer: `PerRow` (a list with one object
    /// per request row, as the managed endpoint answers) or `Documented` (one
    /// object with a list of vectors per field, as its documentation shows).
    /// The gateway's `x-medembed-response-format` header, when present, takes
    /// precedence (it carries the endpoint's setting).
    #[arg(long, env = env::RESPONSE_FORMAT, default_value = "PerRow")]
    pub response_format: ResponseFormat,

    /// Seconds to finish accepted requests after SIGTERM before exiting.
    #[arg(long, env = "MEDEMBED_SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    pub shutdown_grace_seconds: u64,

    /// Log format.
    #[arg(long, env = env::LOG_FORMAT, value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

impl WorkerConfig {
    /// A configuration with defaults for the given model directory, for tests
    /// and embedding.
    pub fn for_model(model_dir: impl Into<PathBuf>) -> Self {
        let model_dir = model_dir.into();
        let mut cfg = WorkerConfig::parse_from(["medembed-worker", "--model-dir", "."]);
        cfg.model_dir = model_dir;
        cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        cfg
    }

    /// The settings the operator controls ([`WorkerSettings`]), as this
    /// configuration has them.
    pub fn settings(&self) -> WorkerSettings {
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        let ms = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        WorkerSettings {
            execution_provider: self.execution_provider,
            sessions: n(self.sessions),
            max_batch_images: n(self.max_batch_images),
            max_batch_texts: n(self.max_batch_texts),
            max_queue_delay_ms: ms(self.max_queue_delay_ms),
            max_concurrent_requests: n(self.max_concurrent_requests),
            request_timeout_ms: ms(self.request_timeout_ms),
            max_body_bytes: self.max_body_bytes as u64,
            max_rows: n(self.max_rows),
            response_format: self.response_format,
            trt_cache_dir: self.trt_cache_dir.display().to_string(),
            json_logs: self.log_format == LogFormat::Json,
        }
    }

    /// Default request time budget.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Longest a batch waits for more work.
    pub fn max_queue_delay(&self) -> Duration {
        Duration::from_millis(self.max_queue_delay_ms)
    }

    /// Number of CPUs, for the `0 = automatic` settings.
    pub fn cpus() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// Decode threads after resolving `0`.
    pub fn decode_threads(&self) -> usize {
        if self.decode_threads == 0 {
            Self::cpus()
        } else {
            self.decode_threads
        }
    }

    /// Intra-op threads after resolving `0`.
    pub fn intra_threads(&self) -> usize {
        if self.intra_threads == 0 {
            Self::cpus()
        } else {
            self.intra_threads
        }
    }

    /// Checks values that clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("--sessions", self.sessions),
            ("--max-batch-images", self.max_batch_images),
            ("--max-batch-texts", self.max_batch_texts),
            ("--max-queued-images", self.max_queued_images),
            ("--max-queued-texts", self.max_queued_texts),
            ("--max-concurrent-requests", self.max_concurrent_requests),
            ("--max-rows", self.max_rows),
            ("--max-body-bytes", self.max_body_bytes),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.max_decoded_bytes == 0 {
            return Err("--max-decoded-bytes must be at least 1".into());
        }
        if self.max_buffered_bytes < self.max_body_bytes {
            return Err("--max-buffered-bytes must be at least --max-body-bytes".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// What the operator renders ([`WorkerSettings::to_env`]) is what the
    /// worker reads: every variable is one of the worker's flags, and
    /// parsing them gives the same settings back; with none, the worker's
    /// defaults are [`WorkerSettings::default`].
    #[test]
    fn the_operators_settings_round_trip() {
        let defaults = WorkerConfig::try_parse_from(["medembed-worker", "--model-dir=."]).unwrap();
        assert_eq!(defaults.settings(), WorkerSettings::default());
        let want = WorkerSettings {
            execution_provider: ExecutionProvider::Cuda,
            sessions: 2,
            max_batch_images: 32,
            max_batch_texts: 128,
            max_queue_delay_ms: 7,
            max_concurrent_requests: 99,
            request_timeout_ms: 9000,
            max_body_bytes: 1 << 20,
            max_rows: 10,
            response_format: ResponseFormat::Documented,
            trt_cache_dir: "/cache/trt".into(),
            json_logs: false,
        };
        let cmd = WorkerConfig::command();
        let mut args = vec!["medembed-worker".to_string(), "--model-dir=.".into()];
        for (name, value) in want.to_env() {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_env().is_some_and(|e| e == name.as_str()))
                .unwrap_or_else(|| panic!("no flag reads {name}"));
            args.push(format!("--{}={value}", arg.get_long().unwrap()));
        }
        let cfg = WorkerConfig::try_parse_from(args).unwrap();
        assert_eq!(cfg.settings(), want);
    }
}
