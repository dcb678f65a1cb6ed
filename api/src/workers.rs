//! What the operator, the worker and the gateway agree on about workers:
//!
//! - [`WorkerSettings`]: the settings the operator gives a worker, rendered
//!   into the environment variables the worker reads ([`env`]); a worker
//!   test parses what [`WorkerSettings::to_env`] renders and gets the same
//!   settings back;
//! - [`ExecutionProvider`], one type for the CRD field and the worker's flag;
//! - the worker's exit codes, which the operator turns into status reasons;
//! - the names and labels of a deployment's children, which the gateway
//!   discovers workers by.

use std::collections::BTreeMap;

use crate::ResponseFormat;

/// Where inference runs.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "k8s", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    /// ONNX Runtime's CPU provider.
    #[default]
    Cpu,
    /// NVIDIA CUDA (cuDNN). A worker fails start-up if it cannot register it.
    Cuda,
    /// NVIDIA TensorRT, with CUDA for unsupported nodes; engines cached on disk.
    Tensorrt,
}

impl ExecutionProvider {
    /// The name in specs, flags, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "cpu",
            ExecutionProvider::Cuda => "cuda",
            ExecutionProvider::Tensorrt => "tensorrt",
        }
    }
}

/// Exit code of a worker whose model could not be loaded (the operator
/// reports `ModelLoadFailed`).
pub const EXIT_MODEL_LOAD: i32 = 3;

/// Label naming the `EmbeddingDeployment` a child (Deployment, Service, pod,
/// and so the Service's EndpointSlices) belongs to.
pub const DEPLOYMENT_LABEL: &str = "medembed.io/deployment";
/// Label naming the `EmbeddingEndpoint` a child belongs to.
pub const ENDPOINT_LABEL: &str = "medembed.io/endpoint";
/// `app.kubernetes.io/managed-by` value of every child.
pub const MANAGED_BY: &str = "medembed-operator";
/// Name of the worker Service's (and container's) HTTP port.
pub const WORKER_PORT_NAME: &str = "http";

/// Name of the worker Deployment and Service of an `EmbeddingDeployment`.
pub fn worker_name(deployment: &str) -> String {
    format!("{deployment}-worker")
}

/// Name of the TLS Secret holding the serving certificate of an
/// `EmbeddingDeployment`'s workers (when worker TLS is on).
pub fn worker_tls_secret_name(deployment: &str) -> String {
    format!("{deployment}-worker-tls")
}

/// The name a worker's serving certificate is issued for and the gateway
/// verifies: `<service>.<namespace>.svc` of the worker Service.
pub fn worker_server_name(service: &str, namespace: &str) -> String {
    format!("{service}.{namespace}.svc")
}

/// Where the gateway finds the workers' CA certificate in the ConfigMap the
/// operator publishes (and a worker TLS Secret's entries, as for any
/// `kubernetes.io/tls` Secret).
pub const CA_CERT_ENTRY: &str = "ca.crt";
/// A TLS Secret's certificate entry.
pub const TLS_CERT_ENTRY: &str = "tls.crt";
/// A TLS Secret's private key entry.
pub const TLS_KEY_ENTRY: &str = "tls.key";

/// The environment variables a worker reads its settings from.
pub mod env {
    /// [`super::WorkerSettings::execution_provider`].
    pub const EXECUTION_PROVIDER: &str = "MEDEMBED_EXECUTION_PROVIDER";
    /// [`super::WorkerSettings::sessions`].
    pub const SESSIONS: &str = "MEDEMBED_SESSIONS";
    /// [`super::WorkerSettings::max_batch_images`].
    pub const MAX_BATCH_IMAGES: &str = "MEDEMBED_MAX_BATCH_IMAGES";
    /// [`super::WorkerSettings::max_batch_texts`].
    pub const MAX_BATCH_TEXTS: &str = "MEDEMBED_MAX_BATCH_TEXTS";
    /// [`super::WorkerSettings::max_queue_delay_ms`].
    pub const MAX_QUEUE_DELAY_MS: &str = "MEDEMBED_MAX_QUEUE_DELAY_MS";
    /// [`super::WorkerSettings::max_concurrent_requests`].
    pub const MAX_CONCURRENT_REQUESTS: &str = "MEDEMBED_MAX_CONCURRENT_REQUESTS";
    /// [`super::WorkerSettings::request_timeout_ms`].
    pub const REQUEST_TIMEOUT_MS: &str = "MEDEMBED_REQUEST_TIMEOUT_MS";
    /// [`super::WorkerSettings::max_body_bytes`].
    pub const MAX_BODY_BYTES: &str = "MEDEMBED_MAX_BODY_BYTES";
    /// [`super::WorkerSettings::max_rows`].
    pub const MAX_ROWS: &str = "MEDEMBED_MAX_ROWS";
    /// [`super::WorkerSettings::response_format`].
    pub const RESPONSE_FORMAT: &str = "MEDEMBED_RESPONSE_FORMAT";
    /// [`super::WorkerSettings::trt_cache_dir`].
    pub const TRT_CACHE_DIR: &str = "MEDEMBED_TRT_CACHE_DIR";
    /// [`super::WorkerSettings::json_logs`] (`json` or `text`).
    pub const LOG_FORMAT: &str = "MEDEMBED_LOG_FORMAT";
    /// The worker's minimum request-body rate in bytes per second (a
    /// worker flag, not part of the settings, like its body byte budget).
    pub const MIN_BODY_RATE: &str = "MEDEMBED_MIN_BODY_RATE";
    /// The worker's grace period before the minimum body rate applies, in
    /// milliseconds (a worker flag, not part of the settings).
    pub const BODY_RATE_GRACE_MS: &str = "MEDEMBED_BODY_RATE_GRACE_MS";
    /// The worker's byte budget for decoded image rasters (a worker flag,
    /// not part of the settings).
    pub const MAX_DECODED_BYTES: &str = "MEDEMBED_MAX_DECODED_BYTES";
    /// The model directory (set on the pod, not part of the settings).
    pub const MODEL_DIR: &str = "MEDEMBED_MODEL_DIR";
    /// The listen address (set on the pod, not part of the settings).
    pub const LISTEN: &str = "MEDEMBED_LISTEN";
    /// Where the failure message goes on a fatal error (the container's
    /// termination message).
    pub const TERMINATION_LOG: &str = "MEDEMBED_TERMINATION_LOG";
    /// The worker's serving certificate chain (PEM): with
    /// [`TLS_KEY_FILE`], the worker serves HTTPS only (set on the pod, not
    /// part of the settings).
    pub const TLS_CERT_FILE: &str = "MEDEMBED_TLS_CERT_FILE";
    /// The worker's serving private key (PEM).
    pub const TLS_KEY_FILE: &str = "MEDEMBED_TLS_KEY_FILE";
}

/// The settings the operator gives each worker of a deployment (from the
/// deployment's runtime and its endpoint's request settings and response
/// format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSettings {
    /// Where inference runs.
    pub execution_provider: ExecutionProvider,
    /// Inference sessions per tower.
    pub sessions: u32,
    /// Largest image batch one inference runs.
    pub max_batch_images: u32,
    /// Largest text batch one inference runs.
    pub max_batch_texts: u32,
    /// Longest a batch waits for more work, in milliseconds.
    pub max_queue_delay_ms: u32,
    /// Most requests processed at once.
    pub max_concurrent_requests: u32,
    /// Default time budget of a request, in milliseconds.
    pub request_timeout_ms: u32,
    /// Largest request body in bytes.
    pub max_body_bytes: u64,
    /// Most rows per request.
    pub max_rows: u32,
    /// The JSON shape of a successful answer.
    pub response_format: ResponseFormat,
    /// Directory of the TensorRT engine cache.
    pub trt_cache_dir: String,
    /// JSON log lines (else human-readable text).
    pub json_logs: bool,
}

impl Default for WorkerSettings {
    /// The worker's own defaults (what it runs with when no variable is set;
    /// a worker test checks they agree with its flags).
    fn default() -> Self {
        WorkerSettings {
            execution_provider: ExecutionProvider::Cpu,
            sessions: 1,
            max_batch_images: 16,
            max_batch_texts: 64,
            max_queue_delay_ms: 5,
            max_concurrent_requests: 256,
            request_timeout_ms: 60_000,
            max_body_bytes: 32 * 1024 * 1024,
            max_rows: 1024,
            response_format: ResponseFormat::PerRow,
            trt_cache_dir: "/var/cache/medembed/tensorrt".into(),
            json_logs: true,
        }
    }
}

impl WorkerSettings {
    /// The settings as environment variables ([`env`]), in name order.
    pub fn to_env(&self) -> BTreeMap<String, String> {
        let pairs: [(&str, String); 12] = [
            (
                env::EXECUTION_PROVIDER,
                self.execution_provider.as_str().into(),
            ),
            (env::SESSIONS, self.sessions.to_string()),
            (env::MAX_BATCH_IMAGES, self.max_batch_images.to_string()),
            (env::MAX_BATCH_TEXTS, self.max_batch_texts.to_string()),
            (env::MAX_QUEUE_DELAY_MS, self.max_queue_delay_ms.to_string()),
            (
                env::MAX_CONCURRENT_REQUESTS,
                self.max_concurrent_requests.to_string(),
            ),
            (env::REQUEST_TIMEOUT_MS, self.request_timeout_ms.to_string()),
            (env::MAX_BODY_BYTES, self.max_body_bytes.to_string()),
            (env::MAX_ROWS, self.max_rows.to_string()),
            (env::RESPONSE_FORMAT, self.response_format.as_str().into()),
            (env::TRT_CACHE_DIR, self.trt_cache_dir.clone()),
            (
                env::LOG_FORMAT,
                if self.json_logs { "json" } else { "text" }.into(),
            ),
        ];
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_has_its_own_variable() {
        let s = WorkerSettings {
            execution_provider: ExecutionProvider::Tensorrt,
            response_format: ResponseFormat::Documented,
            ..WorkerSettings::default()
        };
        let env = s.to_env();
        assert_eq!(env.len(), 12);
        assert_eq!(env[env::EXECUTION_PROVIDER], "tensorrt");
        assert_eq!(env[env::RESPONSE_FORMAT], "Documented");
        assert_eq!(env[env::LOG_FORMAT], "json");
        assert!(env.keys().all(|k| k.starts_with("MEDEMBED_")));
        assert_eq!(worker_name("blue"), "blue-worker");
        assert_eq!(worker_tls_secret_name("blue"), "blue-worker-tls");
        assert_eq!(
            worker_server_name("blue-worker", "ns"),
            "blue-worker.ns.svc"
        );
    }
}
