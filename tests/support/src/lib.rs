//! Test support for medembed. For every crate's tests, [`repo`]: the
//! repository's setup (ONNX Runtime, the Python environment, the TEST MODEL)
//! and its binaries, found or built once per test process; [`metrics`]: a
//! metric's value in a `/metrics` text. With the `cluster` feature
//! (default): a **real** Kubernetes control plane on this machine, and a node
//! agent that stands in for the kubelet by running pods as local processes.
//!
//! - [`ControlPlane`] starts etcd, kube-apiserver, kube-controller-manager and
//!   kube-scheduler (built from their Go modules by `scripts/cluster-build.sh`,
//!   started by `scripts/cluster-up.sh`) on random loopback ports, hands out
//!   admin [`kube::Client`]s and fresh namespaces, and stops everything on drop.
//! - [`NodeAgent`] registers fake GPU nodes and runs every pod bound to them as
//!   local processes on its own loopback pod IP (127.x.y.z), reporting pod
//!   status, readiness and restarts back to the API server.
//! - [`wait`] bounds every wait with a timeout; [`command`] runs a program
//!   to its end.
//!
//! Everything stays on 127.0.0.0/8. See `tests/cluster/README.md`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), medembed_testsupport::Error> {
//! use medembed_testsupport::{AgentConfig, ControlPlane, NodeAgent};
//! let cp = ControlPlane::start().await?;
//! let ns = cp.namespace("demo").await?;
//! let agent = NodeAgent::start(&cp, AgentConfig::new("demo")
//!     .image("medembed/worker", "/path/to/medembed-worker")).await?;
//! // ... create Deployments in ns.name(), talk to pods at their pod IPs ...
//! agent.shutdown().await;
//! # Ok(()) }
//! ```

#[cfg(feature = "cluster")]
mod cluster;
#[cfg(feature = "cluster")]
pub mod command;
mod error;
#[cfg(feature = "cluster")]
pub mod http;
pub mod metrics;
#[cfg(feature = "cluster")]
pub mod node;
pub mod redis;
pub mod repo;
#[cfg(feature = "cluster")]
pub mod wait;

#[cfg(feature = "cluster")]
pub use cluster::{ControlPlane, StoppedComponent, TestNamespace};
pub use error::Error;
#[cfg(feature = "cluster")]
pub use node::{AgentConfig, NodeAgent, NodeSpec, ProcessInfo};

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
