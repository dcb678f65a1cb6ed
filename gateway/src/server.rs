//! The gateway's shared state ([`Gateway`]) and its listeners.
//!
//! Both listeners, the scoring API's (plain or TLS) and the optional admin
//! one, run on [`medembed_api::serve`]: the accept loop with its connection
//! limits and timeouts ([`serve_config`]) and graceful shutdown. Every
//! request goes to [`Gateway::handle`], whose path through the gateway is
//! composed in [`crate::stages`].

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::Request;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use medembed_api::serve::{Handshake, PlainTcp, ServeConfig};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::audit::AuditLog;
use crate::auth::JwksCache;
use crate::balance::Registry;
use crate::metrics::Metrics;
use crate::peers::Replicas;
use crate::proxy::{self, HttpClient};
use crate::quota::{Concurrency, LocalStore, RedisSettings, RedisStore, Store};
use crate::stages::body::BodyBudget;
use crate::table::Tables;
use crate::tls::{ReloadingCa, TlsHandshake};
use crate::GatewayConfig;

/// Most mirrored requests in flight at once; beyond, copies are skipped.
const MIRROR_SLOTS: usize = 256;

/// The response body type.
pub type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// A whole body in one piece.
pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Shared state of one gateway.
#[derive(derive_more::Debug)]
#[debug("Gateway {{ .. }}")]
pub struct Gateway {
    /// Configuration.
    pub config: GatewayConfig,
    /// The routing table.
    pub tables: Arc<Tables>,
    /// Known workers.
    pub registry: Arc<Registry>,
    /// Upstream client.
    pub http: HttpClient,
    /// The workers' CA (`--worker-ca-file`): when set, every worker is
    /// dialled over TLS and verified with it.
    pub worker_ca: Option<Arc<ReloadingCa>>,
    /// Metrics.
    pub metrics: Metrics,
    /// Audit log.
    pub audit: AuditLog,
    /// Token key sets.
    pub jwks: JwksCache,
    /// How many replicas share the traffic (limits are divided by it).
    pub replicas: Arc<Replicas>,
    /// Per-minute quota state.
    pub quota: Store,
    /// Concurrency quota state.
    pub concurrency: Concurrency,
    /// Bounds mirrored requests in flight.
    pub mirror_slots: Arc<Semaphore>,
    /// Bounds the bytes of request bodies held at once.
    pub body_budget: BodyBudget,
    /// Set once shutdown begins (`/readyz` turns 503).
    pub draining: AtomicBool,
}

impl Gateway {
    /// The state of a gateway configured by `config`, routing by `tables`
    /// over the workers of `registry` (opens the audit log).
    pub fn new(
        config: GatewayConfig,
        tables: Arc<Tables>,
        registry: Arc<Registry>,
    ) -> anyhow::Result<Self> {
        let metrics = Metrics::new().context("metrics")?;
        let audit = AuditLog::open(&config.audit_log, metrics.clone()).context("audit log")?;
        let worker_ca =
            match &config.worker_ca_file {
                Some(path) => Some(ReloadingCa::from_file(path.clone()).with_context(|| {
                    format!("workers' CA (--worker-ca-file {})", path.display())
                })?),
                None => None,
            };
        let http = proxy::http_client(
            std::time::Duration::from_millis(config.connect_timeout_ms),
            worker_ca.as_ref().map(|ca| (ca.clone(), registry.clone())),
        )?;
        let reload = std::time::Duration::from_millis(config.reload_interval_ms.max(10));
        let quota = match RedisSettings::from_config(&config) {
            Some(settings) => {
                Store::Redis(RedisStore::with_settings(settings).context("shared quota store")?)
            }
            None => Store::Local(LocalStore::default()),
        };
        Ok(Gateway {
            tables,
            registry,
            http,
            worker_ca,
            metrics,
            audit,
            jwks: JwksCache::new(reload, config.jwks_ca_file.as_deref())?,
            replicas: Arc::new(Replicas::new(config.replicas)),
            quota,
            concurrency: Concurrency::default(),
            mirror_slots: Arc::new(Semaphore::new(MIRROR_SLOTS)),
            body_budget: BodyBudget::new(config.max_buffered_bytes),
            draining: AtomicBool::new(false),
            config,
        })
    }
}

/// The connection limits and timeouts of the gateway's listeners, from its
/// configuration (a zero turns a limit off).
pub fn serve_config(cfg: &GatewayConfig) -> ServeConfig {
    let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
    ServeConfig {
        max_connections: (cfg.max_connections > 0).then_some(cfg.max_connections),
        header_read_timeout: ms(cfg.header_read_timeout_ms),
        idle_timeout: ms(cfg.idle_timeout_ms),
        http2_max_concurrent_streams: Some(cfg.http2_max_concurrent_streams),
        shutdown_grace: Duration::from_secs(cfg.shutdown_grace_seconds),
        ..ServeConfig::default()
    }
}

/// Which of the gateway's listeners a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The scoring API's.
    Public,
    /// The admin listener (`--admin-listen`): the gateway's own paths only.
    Admin,
}

/// Serves the gateway as its `which` listener on `listener` (over TLS when
/// `tls` is given) until `shutdown` resolves; `/readyz` turns 503 as
/// shutdown begins, and requests in flight get `config.shutdown_grace` to
/// finish.
pub async fn serve(
    gw: Arc<Gateway>,
    which: Listener,
    listener: TcpListener,
    tls: Option<TlsHandshake>,
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    match tls {
        Some(tls) => serve_with(gw, which, listener, tls, config, shutdown).await,
        None => serve_with(gw, which, listener, PlainTcp, config, shutdown).await,
    }
}

async fn serve_with(
    gw: Arc<Gateway>,
    which: Listener,
    listener: TcpListener,
    handshake: impl Handshake,
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let state = gw.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let gw = state.clone();
        async move { Ok::<_, Infallible>(gw.handle(req, which).await) }
    });
    let shutdown = async {
        shutdown.await;
        gw.draining.store(true, Ordering::Release);
    };
    medembed_api::serve::serve(listener, config, handshake, service, shutdown).await;
}
