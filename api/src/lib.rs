//! Types shared by medembed's programs.
//!
//! The scoring API is the managed MedImageInsight endpoint's, unchanged, so that
//! clients written for it work against an on-prem cluster. Both the worker and
//! the gateway parse requests with [`score::parse_request`] (the gateway in its
//! counting form, [`score::count_request`]), so they agree on what is valid
//! and on the wording of every error.
//!
//! With the `server` feature, [`serve`] is the accept loop every medembed
//! server shares: connection limits, timeouts and graceful shutdown; with
//! `tls`, [`tls`] adds reloading certificates for servers and a reloading CA
//! for clients; with `pki`, [`pki`] issues and checks the workers' serving
//! certificates.

#[cfg(feature = "k8s")]
pub mod crd;
pub mod error;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "pki")]
pub mod pki;
pub mod request_id;
pub mod score;
#[cfg(feature = "server")]
pub mod serve;
#[cfg(feature = "tls")]
pub mod tls;
pub mod workers;

pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use request_id::{CLIENT_REQUEST_ID_HEADER, REQUEST_ID_HEADER};
pub use score::{
    count_request, parse_request, Embeddings, RequestCounts, RequestError, RequestLimits,
    ResponseFormat, Row, RowEmbeddings, RowResponse, ScoreRequest, ScoreResponse,
};
pub use workers::{ExecutionProvider, WorkerSettings};

/// Header carrying the time budget left for a request, in milliseconds, from the
/// gateway to a worker. Work still queued when it runs out is dropped.
pub const TIMEOUT_HEADER: &str = "x-medembed-timeout-ms";

/// Header the managed service uses to pin a request to one deployment.
pub const DEPLOYMENT_HEADER: &str = "azureml-model-deployment";

/// Header carrying the endpoint's [`ResponseFormat`] from the gateway to a
/// worker; it takes precedence over the worker's own setting, so a change of
/// an endpoint's format applies at once, to every request.
pub const RESPONSE_FORMAT_HEADER: &str = "x-medembed-response-format";
