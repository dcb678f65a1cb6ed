//! medembed's gateway: one entry point, compatible with the managed
//! endpoint's scoring API, in front of every embedding endpoint's workers.
//!
//! It routes by host name (as the managed service does) or path prefix,
//! authenticates clients by key or token ([`auth`]), enforces per-client
//! quotas ([`quota`]), splits traffic across deployments by weight with
//! pinning and mirroring ([`server`]), balances across workers by power of
//! two choices ([`balance`]) with one safe retry ([`proxy`]), terminates TLS
//! ([`tls`]), and reports what it does ([`metrics`], [`audit`], [`trace`]).
//! What to route comes from a static file ([`file`]) or from Kubernetes
//! ([`discovery`]), into one routing model ([`table`]).
//!
//! The library exposes [`start`] (bind on the configured address, possibly
//! port 0, and serve in the background) and [`run`] (serve until a shutdown
//! signal), so tests run gateways in-process and `main.rs` stays thin.

pub mod audit;
pub mod auth;
pub mod balance;
pub mod config;
pub mod discovery;
pub mod file;
pub mod metrics;
pub mod proxy;
pub mod quota;
pub mod redis_client;
pub mod server;
pub mod table;
pub mod tls;
pub mod trace;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};

pub use config::GatewayConfig;

use crate::audit::AuditLog;
use crate::auth::JwksCache;
use crate::balance::Registry;
use crate::metrics::Metrics;
use crate::quota::{Concurrency, LocalStore, RedisSettings, RedisStore, Store};
use crate::server::Gateway;
use crate::table::Tables;

/// Most mirrored requests in flight at once; beyond, copies are skipped.
const MIRROR_SLOTS: usize = 256;

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

/// Reads each worker's reported queue depth every `every`.
fn spawn_scraper(gw: Arc<Gateway>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let workers = gw.registry.all();
            let fetches = workers.iter().map(|w| {
                let http = gw.http.clone();
                let url = format!("http://{}/metrics", w.authority);
                async move {
                    if let Ok(text) =
                        proxy::get_text(&http, &url, every.min(Duration::from_secs(1))).await
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
    let metrics = Metrics::new().context("metrics")?;
    let audit = AuditLog::open(&cfg.audit_log, metrics.clone()).context("audit log")?;
    let http = proxy::http_client(Duration::from_millis(cfg.connect_timeout_ms));
    let tables = Arc::new(Tables::default());
    let registry = Arc::new(Registry::default());
    let reload = Duration::from_millis(cfg.reload_interval_ms.max(10));
    let quota = match RedisSettings::from_config(&cfg) {
        Some(settings) => {
            Store::Redis(RedisStore::with_settings(settings).context("shared quota store")?)
        }
        None => Store::Local(LocalStore::default()),
    };
    let gw = Arc::new(Gateway {
        config: cfg.clone(),
        tables: tables.clone(),
        registry: registry.clone(),
        http: http.clone(),
        metrics,
        audit,
        jwks: JwksCache::new(http, reload),
        quota,
        concurrency: Concurrency::default(),
        mirror_slots: Arc::new(Semaphore::new(MIRROR_SLOTS)),
        draining: AtomicBool::new(false),
    });
    let mut background = Vec::new();
    match &cfg.config_file {
        Some(path) => background.push(
            file::watch(path.clone(), reload, tables, registry)
                .with_context(|| format!("configuration file {}", path.display()))?,
        ),
        None => {
            let settings = discovery::Settings {
                namespace: cfg.namespace.clone(),
                kubeconfig: cfg.kubeconfig.clone(),
                host_template: cfg.host_template.clone(),
            };
            background.push(discovery::start(settings, tables, registry).await?)
        }
    }
    if cfg.scrape_interval_ms > 0 {
        background.push(spawn_scraper(
            gw.clone(),
            Duration::from_millis(cfg.scrape_interval_ms),
        ));
    }
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => {
            let cert = tls::ReloadingCert::new(c.clone(), k.clone()).context("TLS certificate")?;
            background.push(cert.watch(reload));
            Some(cert.acceptor()?)
        }
        _ => None,
    };
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
        let gw2 = gw.clone();
        background.push(tokio::spawn(async move {
            server::serve(gw2, admin, None, std::future::pending(), Duration::ZERO).await;
        }));
    }
    let grace = Duration::from_secs(cfg.shutdown_grace_seconds);
    let gw2 = gw.clone();
    let task = tokio::spawn(async move {
        server::serve(
            gw2,
            listener,
            tls,
            async {
                let _ = stop_rx.await;
            },
            grace,
        )
        .await;
    });
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
    let running = start(cfg).await?;
    shutdown.await;
    tracing::info!("shutting down; draining in-flight requests");
    running.shutdown().await;
    Ok(())
}
