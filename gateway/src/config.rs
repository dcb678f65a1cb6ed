//! The gateway's command line: every flag also reads an environment variable,
//! so the same binary is configured by a pod spec, a ConfigMap or a shell.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
pub use medembed_api::serve::LogFormat;

/// A configuration value that must not be shown: a URL with a password, a
/// password. `Debug` prints `<redacted>`; [`Secret::expose`] gives the value
/// to the one place that uses it. Parsing never fails, so a command-line
/// parse error can never echo it either.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value itself: pass it on, never print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

/// What the gateway does with a request when the shared quota store fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreFailure {
    /// Admit it (availability first).
    Open,
    /// Refuse it with 503 (limits first).
    Closed,
}

/// One API-compatible entry point in front of medembed's workers: auth, per-client
/// quotas, balancing, mirroring and metrics.
#[derive(Debug, Clone, Parser)]
#[command(name = "medembed-gateway", version, about)]
pub struct GatewayConfig {
    /// Address to serve the scoring API on.
    #[arg(long, env = "MEDEMBED_GATEWAY_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// Optional separate address for `/metrics`, `/livez` and `/readyz`. When
    /// set, `/metrics` is served there only (the scoring address answers it
    /// with 404) and nothing but those three paths is served there; `/livez`
    /// and `/readyz` stay on the scoring address too, for load balancers.
    #[arg(long, env = "MEDEMBED_GATEWAY_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Longest wait for a request's head, in milliseconds, from the accept
    /// (and, on HTTP/1.1, from the end of the previous request): a client
    /// sending half a header is closed after it (0 = no limit).
    #[arg(
        long,
        env = "MEDEMBED_GATEWAY_HEADER_READ_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub header_read_timeout_ms: u64,

    /// How long a connection may stay open with no request in flight, in
    /// milliseconds (0 = forever).
    #[arg(
        long,
        env = "MEDEMBED_GATEWAY_IDLE_TIMEOUT_MS",
        default_value_t = 60_000
    )]
    pub idle_timeout_ms: u64,

    /// Most connections open at once, per listener; at the cap new
    /// connections wait in the kernel's backlog (0 = no cap).
    #[arg(long, env = "MEDEMBED_GATEWAY_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Most concurrent HTTP/2 streams (requests) per connection.
    #[arg(
        long,
        env = "MEDEMBED_GATEWAY_HTTP2_MAX_CONCURRENT_STREAMS",
        default_value_t = 128
    )]
    pub http2_max_concurrent_streams: u32,

    /// Most bytes of request bodies held in memory at once, across all
    /// connections. A body takes its share as it arrives (all of it at once
    /// when it declares its length, before a byte is read) and gives it back
    /// when the gateway is done with it; a request that finds no room waits,
    /// unread, until its deadline, then gets 503 with `Retry-After`. A body
    /// larger than the whole budget is refused (413). The gateway's memory
    /// is about this plus a fixed base.
    #[arg(
        long,
        env = "MEDEMBED_GATEWAY_MAX_BUFFERED_BYTES",
        default_value_t = 128 << 20
    )]
    pub max_buffered_bytes: u64,

    /// Static configuration file (YAML: endpoints, deployments with worker
    /// addresses, clients with key hashes and quotas). Re-read when it changes.
    /// Without it, the gateway discovers everything from Kubernetes.
    #[arg(long, env = "MEDEMBED_GATEWAY_CONFIG")]
    pub config_file: Option<PathBuf>,

    /// Namespace to watch in Kubernetes mode (all namespaces when absent).
    #[arg(long, env = "MEDEMBED_GATEWAY_NAMESPACE")]
    pub namespace: Option<String>,

    /// Kubeconfig file for Kubernetes mode outside a cluster (default: the
    /// in-cluster service account, else `$KUBECONFIG` or `~/.kube/config`).
    #[arg(long, env = "MEDEMBED_GATEWAY_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// In Kubernetes mode, a host name given to every endpoint besides its
    /// `spec.hosts`, with `{name}` and `{namespace}` replaced (for a wildcard
    /// DNS record, e.g. `{name}.{namespace}.ml.hospital.example`).
    #[arg(long, env = "MEDEMBED_GATEWAY_HOST_TEMPLATE")]
    pub host_template: Option<String>,

    /// How often files (static configuration, JWKS files, TLS certificates) are
    /// checked for changes, in milliseconds.
    #[arg(long, env = "MEDEMBED_GATEWAY_RELOAD_MS", default_value_t = 2000)]
    pub reload_interval_ms: u64,

    /// PEM certificate chain for TLS. TLS is off unless both this and
    /// `--tls-key` are set. Reloaded when the file changes (a mounted Secret
    /// updates in place).
    #[arg(long, env = "MEDEMBED_GATEWAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for TLS.
    #[arg(long, env = "MEDEMBED_GATEWAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s) of the workers' serving certificates. When set,
    /// every worker is dialled over TLS, trusting only these certificates
    /// (no system roots), and must present a certificate for its
    /// deployment's name (`<service>.<namespace>.svc`; in file mode the
    /// deployment's `tlsServerName`, else the worker's IP address).
    /// Reloaded when the file changes (a mounted ConfigMap updates in place).
    #[arg(long, env = "MEDEMBED_GATEWAY_WORKER_CA_FILE")]
    pub worker_ca_file: Option<PathBuf>,

    /// PEM bundle of extra CA certificates trusted, besides the system's
    /// roots, when fetching token key sets (`jwksUri`) over HTTPS: an
    /// identity provider inside the hospital with a private CA.
    #[arg(long, env = "MEDEMBED_GATEWAY_JWKS_CA_FILE")]
    pub jwks_ca_file: Option<PathBuf>,

    /// Number of gateway replicas sharing the traffic. Without a shared quota
    /// store each replica enforces 1/N of every per-minute and concurrency
    /// limit (rounded up), assuming the load balancer in front spreads clients
    /// evenly.
    #[arg(long, env = "MEDEMBED_GATEWAY_REPLICAS", default_value_t = 1)]
    pub replicas: u32,

    /// The Secret, `NAMESPACE/NAME`, the operator publishes the endpoints'
    /// and clients' key hashes and JWKS key sets into (its
    /// `--credentials-secret`). Kubernetes mode reads no other Secret or
    /// ConfigMap; without it, Key-mode endpoints accept no key and
    /// `jwksConfigMap` key sets are empty.
    #[arg(long, env = "MEDEMBED_GATEWAY_CREDENTIALS_SECRET")]
    pub credentials_secret: Option<String>,

    /// The gateway's own Service, `NAMESPACE/NAME`: count the replicas
    /// sharing the traffic live from its EndpointSlices (needed when an
    /// autoscaler changes their number); `--replicas` is then the fallback
    /// until the first count.
    #[arg(long, env = "MEDEMBED_GATEWAY_PEERS_SERVICE")]
    pub peers_service: Option<String>,

    /// Redis URL of a shared quota store: per-minute limits become exact
    /// across all replicas (concurrency limits stay per replica).
    /// `redis://[user[:password]@]host[:port][/db]`, or `rediss://...` for TLS.
    /// It may hold a password, so it is never logged; prefer the environment
    /// variable (from a Secret) to the flag, which any process can list.
    #[arg(long, env = "MEDEMBED_GATEWAY_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<Secret>,

    /// Redis password, replacing any in the URL (the URL's user, if any, is
    /// kept). Meant for the environment variable, from a Secret.
    #[arg(
        long,
        env = "MEDEMBED_GATEWAY_REDIS_PASSWORD",
        hide_env_values = true,
        conflicts_with = "redis_password_file"
    )]
    pub redis_password: Option<Secret>,

    /// File holding the Redis password (one line; a trailing newline is
    /// ignored), replacing any in the URL: a mounted Secret. Read again when
    /// the connection has to be rebuilt, so a rotated password is picked up.
    #[arg(long, env = "MEDEMBED_GATEWAY_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,

    /// PEM bundle of the certificate authorities trusted for a `rediss://`
    /// URL, instead of the system's.
    #[arg(long, env = "MEDEMBED_GATEWAY_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// Longest time one quota check may wait for Redis, connecting included,
    /// in milliseconds; past it the request is admitted (fails open) and
    /// counted as `quota_store_error`.
    #[arg(long, env = "MEDEMBED_GATEWAY_REDIS_TIMEOUT_MS", default_value_t = 500)]
    pub redis_timeout_ms: u64,

    /// Count quota violations (metrics, audit) without rejecting any request,
    /// for every client.
    #[arg(long, env = "MEDEMBED_GATEWAY_QUOTA_DRY_RUN", default_value_t = false)]
    pub quota_dry_run: bool,

    /// What a request meets when the shared quota store cannot answer in
    /// time: `open` admits it (availability first), `closed` refuses it with
    /// 503 and Retry-After (limits first). Both are counted
    /// (`rejections_total{reason="quota_store_error"}`).
    #[arg(
        long,
        env = "MEDEMBED_GATEWAY_QUOTA_STORE_FAILURE",
        value_enum,
        default_value_t = StoreFailure::Open
    )]
    pub quota_store_failure: StoreFailure,

    /// How long a worker that answered 429/503 or refused a connection is
    /// avoided, in milliseconds.
    #[arg(long, env = "MEDEMBED_GATEWAY_PENALTY_MS", default_value_t = 1000)]
    pub penalty_ms: u64,

    /// How often each worker's `/metrics` is read for its queue depth, in
    /// milliseconds (0 = never).
    #[arg(long, env = "MEDEMBED_GATEWAY_SCRAPE_MS", default_value_t = 1000)]
    pub scrape_interval_ms: u64,

    /// Timeout for opening a connection to a worker, in milliseconds.
    #[arg(
        long,
        env = "MEDEMBED_GATEWAY_CONNECT_TIMEOUT_MS",
        default_value_t = 1000
    )]
    pub connect_timeout_ms: u64,

    /// Where to write the audit log (one JSON line per request): `-` for
    /// standard output, `off`, or a file path (appended).
    #[arg(long, env = "MEDEMBED_GATEWAY_AUDIT_LOG", default_value = "-")]
    pub audit_log: String,

    /// After a shutdown signal, how long the gateway goes on serving new
    /// requests, in seconds, with `/readyz` answering 503 and every HTTP/1.1
    /// answer closing its connection: the time for load balancers
    /// (EndpointSlices, kube-proxy, ingress controllers) to stop sending
    /// here. Then the listener closes and in-flight requests drain.
    #[arg(long, env = "MEDEMBED_GATEWAY_SHUTDOWN_DELAY_S", default_value_t = 0)]
    pub shutdown_delay_seconds: u64,

    /// Longest time in-flight requests may take to finish after a shutdown
    /// signal, in seconds.
    #[arg(long, env = "MEDEMBED_GATEWAY_SHUTDOWN_GRACE_S", default_value_t = 30)]
    pub shutdown_grace_seconds: u64,

    /// Log line format.
    #[arg(long, env = "MEDEMBED_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

impl GatewayConfig {
    /// A configuration for a static file, listening on an ephemeral loopback
    /// port, audit log off (for tests and embedding).
    pub fn for_file(path: impl Into<PathBuf>) -> Self {
        let mut cfg = GatewayConfig::parse_from(["medembed-gateway"]);
        cfg.config_file = Some(path.into());
        cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        cfg.audit_log = "off".into();
        cfg.reload_interval_ms = 200;
        cfg.shutdown_grace_seconds = 10;
        cfg
    }

    /// A configuration for Kubernetes discovery through `kubeconfig`, watching
    /// `namespace`, on an ephemeral loopback port, audit log off.
    pub fn for_kubernetes(kubeconfig: impl Into<PathBuf>, namespace: Option<String>) -> Self {
        let mut cfg = GatewayConfig::parse_from(["medembed-gateway"]);
        cfg.config_file = None;
        cfg.kubeconfig = Some(kubeconfig.into());
        cfg.namespace = namespace;
        cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        cfg.audit_log = "off".into();
        cfg.reload_interval_ms = 200;
        cfg.shutdown_grace_seconds = 10;
        cfg
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn listener_limits_default_on_and_zero_turns_them_off() {
        let cfg = GatewayConfig::parse_from(["medembed-gateway"]);
        let serve = crate::server::serve_config(&cfg);
        assert_eq!(
            serve.header_read_timeout,
            Some(std::time::Duration::from_secs(10))
        );
        assert_eq!(serve.idle_timeout, Some(std::time::Duration::from_secs(60)));
        assert_eq!(serve.max_connections, Some(4096));
        assert_eq!(serve.http2_max_concurrent_streams, Some(128));
        assert_eq!(cfg.max_buffered_bytes, 128 << 20);
        let cfg = GatewayConfig::parse_from([
            "medembed-gateway",
            "--header-read-timeout-ms=0",
            "--idle-timeout-ms=0",
            "--max-connections=0",
            "--http2-max-concurrent-streams=8",
        ]);
        let serve = crate::server::serve_config(&cfg);
        assert_eq!(serve.header_read_timeout, None);
        assert_eq!(serve.idle_timeout, None);
        assert_eq!(serve.max_connections, None);
        assert_eq!(serve.http2_max_concurrent_streams, Some(8));
    }

    #[test]
    fn redis_secrets_never_in_debug_or_parse_errors() {
        let cfg = GatewayConfig::try_parse_from([
            "medembed-gateway",
            "--redis-url",
            "redis://quota:hunter2-url@redis:6379/1",
            "--redis-password",
            "hunter2-flag",
        ])
        .unwrap();
        assert_eq!(
            cfg.redis_url.as_ref().unwrap().expose(),
            "redis://quota:hunter2-url@redis:6379/1"
        );
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));

        let err = GatewayConfig::try_parse_from([
            "medembed-gateway",
            "--redis-password",
            "hunter2-flag",
            "--redis-password-file",
            "/run/secrets/redis",
        ])
        .unwrap_err()
        .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
