//! medembed's gateway: one entry point, compatible with the managed
//! endpoint's scoring API, in front of every embedding endpoint's workers.
//!
//! It routes by host name (as the managed service does) or path prefix,
//! authenticates clients by key or token, enforces per-client quotas,
//! splits traffic across deployments by weight with pinning and mirroring,
//! balances across workers by power of two choices with one safe retry,
//! terminates TLS, and reports what it does (metrics, audit log, traces).
//! What to route comes from a static file ([`file`](mod@file)) or from Kubernetes
//! ([`discovery`]), into one routing model ([`table`]).
//!
//! # The request path
//!
//! One request goes through these stages, composed in [`stages`] (read its
//! `mod.rs` top to bottom); each refusal is a [`GatewayError`] ([`error`]),
//! answered in the API's JSON error shape:
//!
//! ```text
//! connection   medembed_api::serve (via server)  cap, TLS, header-read/idle timeouts
//! routing      stages::route                     /livez /readyz /metrics (admin listener only
//!                                                when set); endpoint by host or path
//! auth         stages::auth  -> auth             key or token -> client and its quota
//! concurrency  stages::admit -> quota            requests in flight per client
//! rate         stages::quota -> quota            requests per minute, before the body
//! body         stages::body                      size limits, deadline, global byte budget
//! parse        stages::parse                     rows, images, row cap (streaming, no JSON tree)
//! quota        stages::quota -> quota, redis_client images and bytes per minute, 429 headers
//! choose       stages::choose                    pin header, traffic weights, mirror
//! forward      stages::forward -> balance, proxy one worker, one retry on another
//! respond      stages::respond -> metrics, audit headers, counters, audit line
//! ```
//!
//! # Modules
//!
//! - [`server`]: the shared state ([`server::Gateway`]) and the listeners.
//! - [`stages`]: the request path, one module per stage; [`error`]: its
//!   one error type.
//! - [`auth`]: key and token verification; [`quota`] and [`redis_client`]: rate
//!   and concurrency state; [`peers`]: how many replicas share the limits; [`balance`]: picking a worker; [`proxy`]: the
//!   upstream client.
//! - [`table`], [`file`](mod@file), [`discovery`]: what to route and where it comes
//!   from.
//! - [`metrics`], [`audit`], [`trace`]: what the gateway reports; [`tls`]
//!   (`medembed_api::tls`): its own certificate and the workers' CA;
//!   [`config`]: the command line.
//!
//! The library exposes [`start`] (bind on the configured address, possibly
//! port 0, and serve in the background) and [`run`] (serve until a shutdown
//! signal), so tests run gateways in-process and `main.rs` stays thin.

pub mod audit;
pub mod auth;
pub mod balance;
pub mod config;
pub mod discovery;
pub mod error;
pub mod file;
pub mod metrics;
pub mod peers;
pub mod proxy;
pub mod quota;
pub mod redis_client;
pub mod server;
pub mod stages;
pub mod table;
pub use medembed_api::tls;
pub mod trace;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use config::GatewayConfig;
pub use error::GatewayError;

use crate::balance::Registry;
use crate::server::Gateway;
use crate::table::Tables;

/// A gateway serving in the background.
#[derive(Debug)]
pub struct RunningGateway {
    /// The scoring API's address.
    pub addr: SocketAddr,
    /// The admin address, when separate.
    pub admin_addr: Option<SocketAddr>,
    /// Shared state (metrics, tables) for inspection.
    pub state: Arc<Gateway>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningGateway {
    /// Begins a graceful shutdown and waits for in-flight requests to drain.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
        for b in &self.background {
            b.abort();
        }
        self.state.audit.close().await;
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.task.abort();
        for b in &self.background {
            b.abort();
        }
    }
}

/// Largest worker metrics page the scraper reads (a worker's is ~10 KiB).
const METRICS_MAX_BYTES: usize = 1024 * 1024;

/// Reads each worker's reported queue depth every `every`.
fn spawn_scraper(gw: Arc<Gateway>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let workers = gw.registry.all();
            let fetches = workers.iter().map(|w| {
                let http = gw.http.clone();
                let url = http.url(&w.authority, "/metrics");
                async move {
                    if let Ok(text) = proxy::get_text(
                        &http,
                        &url,
                        every.min(Duration::from_secs(1)),
                        METRICS_MAX_BYTES,
                    )
                    .await
                    {
                        if let Some(d) = balance::parse_queue_depth(&text) {
                            w.set_queue_depth(d);
                        }
                    }
                }
            });
            futures::future::join_all(fetches).await;
        }
    })
}

/// Binds, loads the configuration and serves in the background.
pub async fn start(cfg: GatewayConfig) -> anyhow::Result<RunningGateway> {
    let tables = Arc::new(Tables::default());
    let registry = Arc::new(Registry::default());
    let reload = Duration::from_millis(cfg.reload_interval_ms.max(10));
    let gw = Arc::new(Gateway::new(cfg.clone(), tables.clone(), registry.clone())?);
    let mut background = Vec::new();
    match &cfg.config_file {
        Some(path) => background.push(
            file::watch(path.clone(), reload, tables, registry)
                .with_context(|| format!("configuration file {}", path.display()))?,
        ),
        None => {
            let credentials = match &cfg.credentials_secret {
                Some(s) => Some(peers::parse_object("--credentials-secret", s)?),
                None => {
                    tracing::warn!("no --credentials-secret: Key-mode endpoints accept no key and jwksConfigMap key sets are empty");
                    None
                }
            };
            let settings = discovery::Settings {
                namespace: cfg.namespace.clone(),
                kubeconfig: cfg.kubeconfig.clone(),
                host_template: cfg.host_template.clone(),
                credentials,
            };
            background.push(discovery::start(settings, tables, registry).await?)
        }
    }
    if let Some(service) = &cfg.peers_service {
        let (ns, name) = peers::parse_service(service)?;
        let settings = discovery::Settings {
            kubeconfig: cfg.kubeconfig.clone(),
            ..Default::default()
        };
        let client = discovery::kube_client(&settings).await?;
        background.push(peers::watch(client, &ns, &name, gw.replicas.clone()));
    }
    if let Some(ca) = &gw.worker_ca {
        background.push(ca.watch(reload));
    }
    if cfg.scrape_interval_ms > 0 {
        background.push(spawn_scraper(
            gw.clone(),
            Duration::from_millis(cfg.scrape_interval_ms),
        ));
    }
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => {
            let cert =
                tls::ReloadingCert::from_files(c.clone(), k.clone()).context("TLS certificate")?;
            background.push(cert.watch(reload));
            Some(cert.handshake()?)
        }
        _ => None,
    };
    let serve_config = server::serve_config(&cfg);
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let mut admin_addr = None;
    if let Some(a) = cfg.admin_listen {
        let admin = TcpListener::bind(a)
            .await
            .with_context(|| format!("cannot listen on {a}"))?;
        admin_addr = Some(admin.local_addr()?);
        // Serves until the gateway is dropped (its task is aborted).
        background.push(tokio::spawn(server::serve(
            gw.clone(),
            server::Listener::Admin,
            admin,
            None,
            serve_config,
            std::future::pending(),
        )));
    }
    let task = tokio::spawn(server::serve(
        gw.clone(),
        server::Listener::Public,
        listener,
        tls,
        serve_config,
        async move {
            let _ = stop_rx.await;
        },
    ));
    tracing::info!(%addr, "gateway listening");
    Ok(RunningGateway {
        addr,
        admin_addr,
        state: gw,
        stop: Some(stop_tx),
        task,
        background,
    })
}

/// Serves until `shutdown` resolves, then drains in-flight requests.
pub async fn run(
    cfg: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let delay = Duration::from_secs(cfg.shutdown_delay_seconds);
    let running = start(cfg).await?;
    shutdown.await;
    // Not ready any more, but still serving: load balancers take a moment
    // to stop sending here, and a refused connection would fail a request.
    running
        .state
        .draining
        .store(true, std::sync::atomic::Ordering::Release);
    if !delay.is_zero() {
        tracing::info!(
            delay_s = delay.as_secs(),
            "shutdown signal: /readyz now 503, serving on until load balancers stop sending"
        );
        tokio::time::sleep(delay).await;
    }
    tracing::info!("shutting down; draining in-flight requests");
    running.shutdown().await;
    Ok(())
}
