//! The crate's error type: one enum, each variant with its source.

use std::path::PathBuf;

/// Errors from starting the control plane or running the node agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A helper script (`scripts/cluster-*.sh`) failed.
    #[error("{script} failed ({status}): {stderr}")]
    Script {
        /// The script's path.
        script: PathBuf,
        /// Its exit status.
        status: String,
        /// The tail of its standard error.
        stderr: String,
    },
    /// Reading or writing local files, or spawning a process, failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The kubeconfig could not be loaded.
    #[cfg(feature = "cluster")]
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// A Kubernetes API call failed.
    #[cfg(feature = "cluster")]
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A bounded wait ran out of time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The bound.
        after: std::time::Duration,
    },
    /// Anything else (a malformed object, a missing image mapping, ...).
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
