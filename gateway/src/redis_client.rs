//! The connection behind the shared quota store: Redis through the `redis`
//! crate, with what a quota check on every request needs around it.
//!
//! - **Reconnection.** A [`ConnectionManager`] keeps one multiplexed
//!   connection and replaces it by itself when it drops (Redis restarted).
//!   It keeps a connection that failed for another reason (refused
//!   credentials) or that stays open but stopped answering (a frozen or
//!   vanished host), so after any failure the manager is also rebuilt from
//!   the settings, at most once per [`REBUILD_AFTER`]; a password file is
//!   read again then, so a rotated password is picked up without a restart.
//! - **Credentials.** User and password in the URL
//!   (`redis://user:password@host:port/db`), or the password from a file or
//!   an environment variable, which then replaces the URL's, so it need not
//!   sit in the URL.
//! - **TLS.** `rediss://` URLs go through rustls with the ring provider (the
//!   one the rest of the gateway uses), trusting the system's certificate
//!   authorities or a configured PEM bundle. Certificate verification cannot
//!   be turned off.
//! - **A bound per call.** Every call, connecting included, ends within the
//!   configured timeout: a slow or unreachable Redis delays a request by at
//!   most that much, and the caller then admits it (the store fails open).
//! - **No secret shown.** Errors name what went wrong (refused, timed out,
//!   credentials refused, the server's error code) but never the URL, the
//!   user or the password; `Debug` shows only scheme, host, port and
//!   database.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    ConnectionAddr, ConnectionInfo, ErrorKind, FromRedisValue, IntoConnectionInfo, Script,
    ScriptInvocation, TlsCertificates,
};
use tokio::time::Instant;

use crate::config::{GatewayConfig, Secret};

/// Shortest time between two rebuilds of a connection that failed for a
/// reason other than I/O.
pub const REBUILD_AFTER: Duration = Duration::from_secs(5);

/// The default bound on one call, connecting included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

/// Where the shared quota store is and how to reach it.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://[user[:password]@]host[:port][/db]` or `rediss://...`.
    pub url: Secret,
    /// A password replacing the URL's.
    pub password: Option<Secret>,
    /// A file holding the password (a trailing newline is ignored), replacing
    /// the URL's; read again whenever the connection is rebuilt.
    pub password_file: Option<PathBuf>,
    /// PEM certificate authorities trusted for TLS instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Bound on one call, connecting included.
    pub timeout: Duration,
}

impl RedisSettings {
    /// Settings for `url` alone, with the default timeout.
    pub fn new(url: impl Into<Secret>) -> Self {
        RedisSettings {
            url: url.into(),
            password: None,
            password_file: None,
            ca_file: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The settings of the gateway's command line, when a Redis URL is given.
    pub fn from_config(cfg: &GatewayConfig) -> Option<Self> {
        let url = cfg.redis_url.clone()?;
        Some(RedisSettings {
            url,
            password: cfg.redis_password.clone(),
            password_file: cfg.redis_password_file.clone(),
            ca_file: cfg.redis_ca_file.clone(),
            timeout: Duration::from_millis(cfg.redis_timeout_ms.max(1)),
        })
    }
}

/// Failures talking to Redis. The texts never hold the URL or a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisError {
    /// The settings cannot work (the URL does not parse, a file is missing).
    #[error("Redis settings: {0}")]
    Config(String),
    /// No connection: refused, dropped, TLS handshake failed.
    #[error("Redis unreachable: {0}")]
    Unreachable(String),
    /// No answer within the bound.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis refused the user or password.
    #[error("Redis refused the credentials")]
    Auth,
    /// Redis answered with an error; its code only (`BUSY`, `OOM`, `ERR`).
    #[error("Redis answered with an error ({0})")]
    Server(String),
    /// The answer had an unexpected shape.
    #[error("unexpected Redis reply")]
    Reply,
}

impl RedisError {
    fn config(what: impl Into<String>) -> Self {
        RedisError::Config(what.into())
    }
}

/// The secrets of one connection (URL, user, password), to strip from any
/// text of the `redis` crate before it is shown. `Debug` prints nothing.
#[derive(Clone, Default)]
struct Redactor(Vec<String>);

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactor")
    }
}

impl Redactor {
    fn add(&mut self, secret: &str) {
        if !secret.is_empty() && !self.0.iter().any(|s| s == secret) {
            self.0.push(secret.to_string());
            // Longest first: a URL holds its password.
            self.0.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// `text` with every secret replaced, and bounded in length.
    fn clean(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.0 {
            out = out.replace(s.as_str(), "<redacted>");
        }
        if out.len() > 300 {
            let mut end = 300;
            while !out.is_char_boundary(end) {
                end -= 1;
            }
            out.truncate(end);
            out.push('…');
        }
        out
    }

    /// Describes an error of the `redis` crate: a fixed text for refused
    /// credentials, the error code only for a server error (its message can
    /// quote keys and arguments), the cleaned text for a connection failure
    /// (refused, timed out, TLS certificate not trusted).
    fn describe(&self, e: &redis::RedisError) -> RedisError {
        match e.kind() {
            ErrorKind::AuthenticationFailed => RedisError::Auth,
            ErrorKind::Server(_) => match e.code() {
                Some("WRONGPASS" | "NOAUTH" | "NOPERM") => RedisError::Auth,
                Some(code) => RedisError::Server(self.clean(code)),
                None => RedisError::Server("unknown".into()),
            },
            ErrorKind::Parse | ErrorKind::UnexpectedReturnType => RedisError::Reply,
            ErrorKind::InvalidClientConfig => {
                RedisError::config("the client configuration was refused")
            }
            _ => RedisError::Unreachable(self.clean(&e.to_string())),
        }
    }
}

/// The manager in use and when it was built.
struct Current {
    manager: ConnectionManager,
    redactor: Redactor,
    built: Instant,
}

/// A self-reconnecting, bounded connection to one Redis.
pub struct RedisClient {
    settings: RedisSettings,
    target: String,
    current: Mutex<Current>,
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClient")
            .field("target", &self.target)
            .field("timeout", &self.settings.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisClient {
    /// A client for `settings`; it connects on first use (or on
    /// [`RedisClient::preload`]). Checks the settings now: URL, password file,
    /// CA bundle. Needs a Tokio runtime.
    pub fn new(settings: RedisSettings) -> Result<Self, RedisError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(RedisError::config("a Redis client needs a Tokio runtime"));
        }
        // rustls picks its provider from the process default; make it ring
        // (a no-op when one is installed already).
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let (manager, target, redactor) = build(&settings)?;
        Ok(RedisClient {
            settings,
            target,
            current: Mutex::new(Current {
                manager,
                redactor,
                built: Instant::now(),
            }),
        })
    }

    /// Scheme, host, port and database: what may be shown of the URL.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Whether TLS is used.
    pub fn tls(&self) -> bool {
        self.target.starts_with("rediss://")
    }

    fn manager(&self) -> (ConnectionManager, Redactor) {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        (current.manager.clone(), current.redactor.clone())
    }

    /// Runs a script (EVALSHA, loading it on `NOSCRIPT`), within the bound.
    pub async fn run<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        let (mut manager, redactor) = self.manager();
        let timeout = self.settings.timeout;
        let error = match tokio::time::timeout(timeout, invocation.invoke_async(&mut manager)).await
        {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => redactor.describe(&e),
            Err(_) => RedisError::Timeout(timeout),
        };
        // The manager reconnects by itself after a dropped connection, but
        // keeps a connection that failed otherwise (refused credentials) or
        // that stopped answering without closing (a frozen or vanished host
        // can leave it open for minutes).
        if error != RedisError::Reply {
            self.rebuild_if_due();
        }
        Err(error)
    }

    /// Connects and loads `script` in the background, so the first requests
    /// find both ready; a failure is logged (without detail that could
    /// hold a secret) and left to the next call.
    pub fn preload(&self, script: &Script) {
        let (mut manager, redactor) = self.manager();
        let script = script.clone();
        let target = self.target.clone();
        let bound = self.settings.timeout.max(Duration::from_secs(5));
        tokio::spawn(async move {
            match tokio::time::timeout(bound, script.load_async(&mut manager)).await {
                Ok(Ok(_)) => tracing::debug!(redis = %target, "quota script loaded"),
                Ok(Err(e)) => tracing::warn!(
                    redis = %target,
                    error = %redactor.describe(&e),
                    "Redis not usable yet; quota checks admit requests until it is"
                ),
                Err(_) => tracing::warn!(
                    redis = %target,
                    error = %RedisError::Timeout(bound),
                    "Redis not usable yet; quota checks admit requests until it is"
                ),
            }
        });
    }

    /// Replaces the manager after a failure its own reconnection does not
    /// cover, unless it was built less than [`REBUILD_AFTER`] ago.
    fn rebuild_if_due(&self) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.built.elapsed() < REBUILD_AFTER {
            return;
        }
        current.built = Instant::now();
        match build(&self.settings) {
            Ok((manager, _, redactor)) => {
                tracing::info!(redis = %self.target, "reconnecting to Redis afresh");
                current.manager = manager;
                current.redactor = redactor;
            }
            Err(e) => {
                tracing::warn!(redis = %self.target, error = %e, "cannot rebuild the Redis connection")
            }
        }
    }
}

/// A lazy connection manager for `settings`, what may be shown of the
/// address, and the secrets to keep out of messages.
fn build(settings: &RedisSettings) -> Result<(ConnectionManager, String, Redactor), RedisError> {
    let url = settings.url.expose();
    let mut redactor = Redactor::default();
    redactor.add(url);
    if !url.contains("://") {
        return Err(RedisError::config(
            "the URL is not redis://host[:port][/db] or rediss://...",
        ));
    }
    // The crate's own message is dropped: it could quote part of the URL.
    let info: ConnectionInfo = url.into_connection_info().map_err(|_| {
        RedisError::config(
            "the URL does not parse (redis://[user[:password]@]host[:port][/db] or rediss://...)",
        )
    })?;
    if let Some(p) = info.redis_settings().password() {
        redactor.add(p);
    }
    if let Some(u) = info.redis_settings().username() {
        redactor.add(u);
    }
    if let Some((userinfo, _)) = url
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
    {
        // The user information as written (percent-encoded).
        redactor.add(userinfo);
        if let Some((_, pw)) = userinfo.split_once(':') {
            redactor.add(pw);
        }
    }
    let db = info.redis_settings().db();
    let (target, tls) = match info.addr() {
        ConnectionAddr::Tcp(host, port) => {
            (format!("redis://{}:{port}/{db}", bracket(host)), false)
        }
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            ..
        } => {
            if *insecure {
                return Err(RedisError::config(
                    "TLS certificate verification cannot be turned off (#insecure)",
                ));
            }
            (format!("rediss://{}:{port}/{db}", bracket(host)), true)
        }
        ConnectionAddr::Unix(path) => (format!("unix://{}?db={db}", path.display()), false),
        _ => return Err(RedisError::config("unsupported Redis address")),
    };
    let password = match (&settings.password_file, &settings.password) {
        (Some(path), _) => Some(read_password(path)?),
        (None, Some(p)) => Some(p.clone()),
        (None, None) => None,
    };
    let info = match password {
        Some(p) => {
            if p.expose().is_empty() {
                return Err(RedisError::config("the Redis password is empty"));
            }
            redactor.add(p.expose());
            let redis = info.redis_settings().clone().set_password(p.expose());
            info.set_redis_settings(redis)
        }
        None => info,
    };
    let client = match &settings.ca_file {
        Some(path) => {
            if !tls {
                return Err(RedisError::config(
                    "a CA file is set but the URL is not rediss://",
                ));
            }
            let pem = read_ca(path)?;
            redis::Client::build_with_tls(
                info,
                TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(|_| {
                RedisError::config(format!(
                    "no usable certificate in the CA file {}",
                    path.display()
                ))
            })?
        }
        None => redis::Client::open(info)
            .map_err(|_| RedisError::config("the Redis client cannot be built"))?,
    };
    let timeout = settings.timeout;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        // One quick retry per reconnection; a call that finds Redis down
        // triggers the next reconnection itself, so the store comes back as
        // soon as Redis does and no request waits out a long backoff.
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_millis(200));
    let manager = ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|e| redactor.describe(&e))?;
    Ok((manager, target, redactor))
}

/// `[v6]` for an IPv6 address, as in a URL.
fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn read_password(path: &Path) -> Result<Secret, RedisError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        RedisError::config(format!(
            "cannot read the Redis password file {}: {}",
            path.display(),
            e.kind()
        ))
    })?;
    let line = text.strip_suffix('\n').unwrap_or(&text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    Ok(Secret::from(line))
}

fn read_ca(path: &Path) -> Result<Vec<u8>, RedisError> {
    let pem = std::fs::read(path).map_err(|e| {
        RedisError::config(format!(
            "cannot read the Redis CA file {}: {}",
            path.display(),
            e.kind()
        ))
    })?;
    if !pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(RedisError::config(format!(
            "no certificate in the CA file {}",
            path.display()
        )));
    }
    Ok(pem)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn settings(url: &str) -> RedisSettings {
        RedisSettings::new(url)
    }

    #[tokio::test]
    async fn targets_show_no_credentials() {
        let c = RedisClient::new(settings("redis://quota:hunter2@127.0.0.1:6380/2")).unwrap();
        assert_eq!(c.target(), "redis://127.0.0.1:6380/2");
        assert!(!c.tls());
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("quota"),
            "{shown}"
        );

        let c = RedisClient::new(settings("rediss://:hunter2@redis.example")).unwrap();
        assert_eq!(c.target(), "rediss://redis.example:6379/0");
        assert!(c.tls());

        let c = RedisClient::new(settings("redis://[::1]:7000")).unwrap();
        assert_eq!(c.target(), "redis://[::1]:7000/0");
    }

    #[tokio::test]
    async fn every_form_of_a_secret_is_stripped() {
        let url = "redis://quota:p%40ss-hunter2@127.0.0.1:1/0";
        let mut s = settings(url);
        s.password = Some("other-hunter2".into());
        let (_, target, redactor) = build(&s).unwrap();
        assert_eq!(target, "redis://127.0.0.1:1/0");
        let text = format!("{url} p@ss-hunter2 p%40ss-hunter2 quota other-hunter2");
        let clean = redactor.clean(&text);
        assert!(
            !clean.contains("hunter2") && !clean.contains("quota"),
            "{clean}"
        );
        assert!(!format!("{redactor:?}").contains("hunter2"));
        assert!(redactor.clean(&"x".repeat(1000)).chars().count() <= 301);
    }

    #[tokio::test]
    async fn bad_settings_are_named_without_the_url() {
        for url in [
            "http://hunter2@x",
            "hunter2",
            "redis://:hunter2@x:1/notadb",
            "rediss://:hunter2@x:1/0#insecure",
            "redis://:hunter2@:1",
        ] {
            let e = RedisClient::new(settings(url)).unwrap_err();
            assert!(matches!(e, RedisError::Config(_)), "{url}: {e:?}");
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }

    #[tokio::test]
    async fn password_and_ca_files() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("password");
        std::fs::write(&pw, "hunter2\n").unwrap();
        assert_eq!(read_password(&pw).unwrap().expose(), "hunter2");
        std::fs::write(&pw, "hunter2\r\n").unwrap();
        assert_eq!(read_password(&pw).unwrap().expose(), "hunter2");

        let mut s = settings("redis://127.0.0.1:1");
        s.password_file = Some(dir.path().join("missing"));
        let e = RedisClient::new(s).unwrap_err().to_string();
        assert!(e.contains("password file") && e.contains("missing"), "{e}");

        std::fs::write(&pw, "").unwrap();
        let mut s = settings("redis://127.0.0.1:1");
        s.password_file = Some(pw.clone());
        assert!(RedisClient::new(s)
            .unwrap_err()
            .to_string()
            .contains("empty"));

        // A CA bundle needs TLS and a certificate.
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let mut s = settings("rediss://127.0.0.1:1");
        s.ca_file = Some(ca.clone());
        assert!(RedisClient::new(s)
            .unwrap_err()
            .to_string()
            .contains("no certificate"));
        let mut s = settings("redis://127.0.0.1:1");
        s.ca_file = Some(ca);
        assert!(RedisClient::new(s)
            .unwrap_err()
            .to_string()
            .contains("not rediss://"));
    }

    #[tokio::test]
    async fn the_process_provider_is_ring() {
        let _c = RedisClient::new(settings("rediss://127.0.0.1:1")).unwrap();
        let provider = tokio_rustls::rustls::crypto::CryptoProvider::get_default().unwrap();
        let ring = tokio_rustls::rustls::crypto::ring::default_provider();
        let names = |p: &tokio_rustls::rustls::crypto::CryptoProvider| {
            p.cipher_suites
                .iter()
                .map(|s| format!("{:?}", s.suite()))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(provider), names(&ring));
    }

    #[tokio::test]
    async fn a_silent_server_costs_one_timeout() {
        // Accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        });
        let mut s = settings(&format!("redis://127.0.0.1:{port}"));
        s.timeout = Duration::from_millis(200);
        let c = RedisClient::new(s).unwrap();
        let script = Script::new("return 1");
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let r: Result<i64, _> = c.run(&script.prepare_invoke()).await;
            let took = t.elapsed();
            assert!(
                matches!(
                    r,
                    Err(RedisError::Timeout(_)) | Err(RedisError::Unreachable(_))
                ),
                "{r:?}"
            );
            assert!(took < Duration::from_millis(600), "{took:?}");
        }
        held.abort();
    }

    #[tokio::test]
    async fn a_closed_port_fails_fast() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = RedisClient::new(settings(&format!("redis://:hunter2@127.0.0.1:{port}"))).unwrap();
        let script = Script::new("return 1");
        let r: Result<i64, _> = c.run(&script.prepare_invoke()).await;
        let e = r.unwrap_err();
        assert!(matches!(e, RedisError::Unreachable(_)), "{e:?}");
        assert!(!e.to_string().contains("hunter2"));
    }
}
