//! medembed's operator: `kubectl apply` of an `EmbeddingEndpoint` and its
//! `EmbeddingDeployment`s gives running, observable GPU workers.
//!
//! - [`resources`]: pure builders of the desired children;
//! - [`status`]: pure functions from the cluster's state to conditions;
//! - [`controller`]: the two reconcilers (server-side apply, one field
//!   manager, owner references, pruning);
//! - [`leader`]: Lease-based leader election (only the leader reconciles);
//! - [`http`] and [`metrics`]: `/healthz`, `/readyz`, `/metrics`;
//! - [`crdgen`]: the CRD and RBAC YAML generated from the types;
//! - [`credentials`]: publishes the key hashes and key sets the gateway
//!   reads (so it needs no access to tenants' Secrets);
//! - [`fetch`]: the init container fetching URL model sources;
//! - [`worker_tls`]: the workers' CA and serving certificates
//!   (`--worker-tls`).
//!
//! [`start`] runs everything in-process (tests use port 0); `main.rs` is a thin
//! wrapper.

pub mod config;
pub mod controller;
pub mod crdgen;
pub mod credentials;
mod error;
pub mod fetch;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod resources;
pub mod status;
pub mod worker_tls;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::OperatorConfig;
pub use error::Error;

/// A running operator.
pub struct RunningOperator {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), Error>>,
    http: JoinHandle<()>,
    health: Arc<http::Health>,
}

/// Aborts a task when dropped, so that aborting the leader loop also stops
/// the controllers it started.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for RunningOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningOperator")
            .field("addr", &self.addr)
            .finish()
    }
}

impl RunningOperator {
    /// The address of `/healthz`, `/readyz` and `/metrics`.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether this replica holds the leader Lease now.
    pub fn is_leader(&self) -> bool {
        self.health.metrics.leader.get() == 1
    }

    /// The metrics text, as `/metrics` serves it.
    pub fn metrics_text(&self) -> String {
        self.health.metrics.render()
    }

    /// Stops the operator (releasing the Lease if held) and waits for it.
    pub async fn shutdown(self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(Error::InvalidObject(format!("operator task: {e}"))),
        }
    }

    /// Stops the operator abruptly, as a crash would: the Lease is not
    /// released, in-flight reconciles are dropped.
    pub fn kill(self) {
        self.task.abort();
        self.http.abort();
        self.health.metrics.leader.set(0);
    }
}

fn identity(config: &OperatorConfig) -> String {
    if let Some(id) = &config.identity {
        return id.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "medembed-operator".into());
    format!("{host}-{}", &resources::generate_key()[..8])
}

/// Starts the operator with `client`: the HTTP listener at once, then leader
/// election; the controllers run while this replica leads.
pub async fn start(config: OperatorConfig, client: Client) -> Result<RunningOperator, Error> {
    config.network_policy().map_err(Error::InvalidObject)?;
    config.credentials().map_err(Error::InvalidObject)?;
    let metrics =
        metrics::Metrics::new().map_err(|e| Error::InvalidObject(format!("metrics: {e}")))?;
    let health = Arc::new(http::Health {
        ready: Default::default(),
        metrics: metrics.clone(),
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Io {
            context: format!("binding {}", config.listen),
            source: e,
        })?;
    let addr = listener.local_addr().map_err(|e| Error::Io {
        context: "local address".into(),
        source: e,
    })?;
    let (stop, stop_rx) = watch::channel(false);
    let mut http_stop = stop_rx.clone();
    let http = tokio::spawn(http::serve(health.clone(), listener, async move {
        let _ = http_stop.wait_for(|s| *s).await;
    }));
    let task = tokio::spawn(lead(config, client, health.clone(), stop_rx));
    tracing::info!(%addr, "operator listening");
    Ok(RunningOperator {
        addr,
        stop,
        task,
        http,
        health,
    })
}

/// Runs the operator until `shutdown` resolves, with a client from the
/// environment (in-cluster service account, or `KUBECONFIG`).
pub async fn run(
    config: OperatorConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let client = Client::try_default().await?;
    let op = start(config, client).await?;
    shutdown.await;
    op.shutdown().await
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Leader election loop: campaign, lead (controllers running) while renewals
/// succeed, step down when they stop succeeding, campaign again.
async fn lead(
    config: OperatorConfig,
    client: Client,
    health: Arc<http::Health>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    let id = identity(&config);
    let elector = leader::LeaderElector::new(
        client.clone(),
        &config.lease_namespace,
        &config.lease_name,
        &id,
        config.lease_duration(),
    );
    let renew = config.lease_renew();
    // Step down when no renewal succeeded for this long: before the Lease
    // expires for the others.
    let deadline = config.lease_duration().saturating_sub(renew / 2).max(renew);
    let ctx = Arc::new(controller::Ctx::new(
        client,
        config.clone(),
        health.metrics.clone(),
        &id,
    ));
    tracing::info!(identity = %id, lease = %config.lease_name, "campaigning for leadership");
    loop {
        // Campaign.
        loop {
            match elector.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => health.ready.store(true, Ordering::Release),
                Err(e) => tracing::warn!(error = %e, "leader election: cannot reach the Lease"),
            }
            tokio::select! {
                _ = tokio::time::sleep(renew) => {}
                _ = stopped(&mut stop) => return Ok(()),
            }
        }
        tracing::info!(identity = %id, "became the leader; starting controllers");
        health.metrics.leader.set(1);
        health.ready.store(true, Ordering::Release);
        let mut controllers = AbortOnDrop(tokio::spawn({
            let ctx = ctx.clone();
            let publisher = config
                .credentials()
                .ok()
                .flatten()
                .map(|s| credentials::run(ctx.client.clone(), s, ctx.metrics.clone()));
            async move {
                let ca = async {
                    if ctx.config.worker_tls {
                        worker_tls::refresh(ctx.clone()).await
                    }
                };
                tokio::join!(
                    controller::deployment::run(ctx.clone()),
                    controller::endpoint::run(ctx.clone()),
                    controller::client::run(ctx.clone()),
                    ca,
                    async move {
                        if let Some(p) = publisher {
                            p.await
                        }
                    },
                );
            }
        }));
        // Lead.
        let mut last_ok = Instant::now();
        let shutting_down = loop {
            tokio::select! {
                _ = tokio::time::sleep(renew) => {}
                _ = stopped(&mut stop) => break true,
            }
            match elector.try_acquire_or_renew().await {
                Ok(true) => last_ok = Instant::now(),
                Ok(false) => {
                    tracing::warn!(identity = %id, "lost the Lease to another replica");
                    break false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the Lease failed");
                    if last_ok.elapsed() >= deadline {
                        break false;
                    }
                }
            }
        };
        controllers.0.abort();
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut controllers.0).await;
        health.metrics.leader.set(0);
        tracing::info!(identity = %id, "stopped leading; controllers stopped");
        if shutting_down {
            elector.release().await;
            return Ok(());
        }
    }
}
