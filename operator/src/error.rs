//! The operator's error type: one enum, each variant with a bounded label for
//! the `medembed_operator_reconcile_errors_total{reason}` metric.

/// Errors of a reconcile or of the operator's start-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Building or reading an object failed (a bug, or an object that lacks
    /// its name or namespace).
    #[error("invalid object: {0}")]
    InvalidObject(String),
    /// The spec cannot be turned into workers (the API server's validation
    /// normally refuses such specs first).
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// JSON (de)serialisation failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The workers' CA cannot be used, or a certificate cannot be issued
    /// (never carries key material).
    #[error("worker TLS: {0}")]
    Certificate(String),
    /// Local I/O failed (the HTTP listener).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 403 => "forbidden",
            Error::Kube(kube::Error::Api(s)) if s.code == 422 => "invalid",
            Error::Kube(kube::Error::Api(_)) => "api_error",
            Error::Kube(_) => "api_unreachable",
            Error::InvalidObject(_) => "invalid_object",
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Json(_) => "json",
            Error::Certificate(_) => "certificate",
            Error::Io { .. } => "io",
        }
    }
}
