//! Serving HTTP/1.1 and HTTP/2 on a TCP listener (feature `server`): the
//! accept loop, each connection's limits and timeouts, and graceful
//! shutdown.
//!
//! Why here: every medembed server (the gateway's listeners today, the
//! worker's and the operator's later) needs the same loop, and the same
//! protection against clients that open connections and then do nothing.
//! One copy means one place to get that right and one [`ServeConfig`] to
//! tune it.
//!
//! What a connection goes through:
//! 1. a slot, when [`ServeConfig::max_connections`] caps them: at the cap,
//!    the loop stops accepting (new connections wait in the kernel's
//!    backlog) until one closes;
//! 2. its [`Handshake`] (TLS, or nothing for plain TCP), within
//!    [`ServeConfig::handshake_timeout`];
//! 3. HTTP, by version detection (HTTP/1.1 or HTTP/2 with prior knowledge or
//!    ALPN), with [`ServeConfig::header_read_timeout`] for each request head,
//!    [`ServeConfig::http2_max_concurrent_streams`], and
//!    [`ServeConfig::idle_timeout`] once no request is in flight.
//!
//! A connection that runs out of time with no request in flight is asked to
//! close gracefully (HTTP/2 `GOAWAY`; HTTP/1.1 closes when idle), and
//! dropped if it is still open one timeout later. A request in flight is
//! never cut by these timeouts: a request's own budget is its service's
//! business.
//!
//! Shutdown: when the `shutdown` future resolves, the listener is closed
//! (new connections are refused), every connection is asked to finish
//! gracefully, and [`serve`] returns once all have closed or after
//! [`ServeConfig::shutdown_grace`].
//!
//! The defaults are the behaviour of a bare `hyper_util` auto builder: no
//! connection cap, no header or idle timeout, hyper's stream limit.
//!
//! Every medembed program also starts the same way: [`init_logging`] (JSON
//! or text lines on standard error, filtered by `MEDEMBED_LOG`) and
//! [`shutdown_signal`] (SIGTERM, as Kubernetes sends, or Ctrl-C).

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Limits and timeouts of one listener's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeConfig {
    /// Most connections open at once (`None`: no cap). At the cap the loop
    /// accepts nothing until a connection closes.
    pub max_connections: Option<usize>,
    /// Longest wait for a request's head (`None`: none). It runs from the
    /// accept for a connection's first request and, on HTTP/1.1, from the
    /// end of one request for the next (hyper's rule), so on HTTP/1.1 it
    /// also bounds the idle time between requests.
    pub header_read_timeout: Option<Duration>,
    /// How long a connection may stay open with no request in flight
    /// (`None`: forever).
    pub idle_timeout: Option<Duration>,
    /// Most concurrent HTTP/2 streams per connection (`None`: hyper's
    /// default, currently 200).
    pub http2_max_concurrent_streams: Option<u32>,
    /// Longest time for a connection's handshake (TLS).
    pub handshake_timeout: Duration,
    /// Longest wait for open connections to finish after shutdown begins.
    pub shutdown_grace: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_connections: None,
            header_read_timeout: None,
            idle_timeout: None,
            http2_max_concurrent_streams: None,
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum LogFormat {
    /// One JSON object per line, for log pipelines.
    #[default]
    Json,
    /// Human-readable text.
    Text,
}

/// Sets up logging for the process: lines in `format` on standard error
/// (standard output is left to data, such as the gateway's audit log),
/// filtered by the `MEDEMBED_LOG` environment variable (`tracing`'s
/// `EnvFilter` syntax), else by `default_filter`.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("MEDEMBED_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on SIGTERM (what Kubernetes sends a pod it stops) or Ctrl-C.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// What turns an accepted TCP stream into the byte stream HTTP runs on: a
/// TLS handshake, or nothing ([`PlainTcp`]).
pub trait Handshake: Clone + Send + Sync + 'static {
    /// The stream HTTP is served on.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Performs the handshake on a freshly accepted stream.
    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

/// Plain TCP: HTTP on the accepted stream as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainTcp;

impl Handshake for PlainTcp {
    type Io = TcpStream;

    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = std::io::Result<TcpStream>> + Send {
        std::future::ready(Ok(tcp))
    }
}

/// Serves `service` on every connection accepted from `listener` until
/// `shutdown` resolves, then closes the listener and lets open connections
/// finish for up to [`ServeConfig::shutdown_grace`] (see the module's doc).
pub async fn serve<H, S, B>(
    listener: TcpListener,
    config: ServeConfig,
    handshake: H,
    service: S,
    shutdown: impl Future<Output = ()>,
) where
    H: Handshake,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>> + Send + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let builder = Arc::new(http_builder(&config));
    let slots = config.max_connections.map(|n| Arc::new(Semaphore::new(n)));
    let (stop_tx, stop_rx) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = take_slot(slots.as_ref()) => p,
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            builder: builder.clone(),
            handshake: handshake.clone(),
            service: service.clone(),
            config,
            stop: stop_rx.clone(),
            _permit: permit,
        };
        tokio::spawn(async move {
            if let Err(e) = conn.run(stream).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(());
    if tokio::time::timeout(config.shutdown_grace, stop_tx.closed())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace ran out with connections still open");
    }
}

/// The HTTP side of every connection of a listener.
fn http_builder(config: &ServeConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    b.http2().timer(TokioTimer::new());
    if let Some(n) = config.http2_max_concurrent_streams {
        b.http2().max_concurrent_streams(n);
    }
    b
}

async fn take_slot(slots: Option<&Arc<Semaphore>>) -> Option<OwnedSemaphorePermit> {
    match slots {
        // The semaphore is never closed, so acquiring only waits.
        Some(s) => s.clone().acquire_owned().await.ok(),
        None => None,
    }
}

/// One accepted connection and what it needs.
struct Conn<H, S> {
    builder: Arc<auto::Builder<TokioExecutor>>,
    handshake: H,
    service: S,
    config: ServeConfig,
    /// Changes (or closes) when shutdown begins; held until the connection
    /// closes, which is what shutdown waits for.
    stop: watch::Receiver<()>,
    /// The connection's slot under the cap, released when it closes.
    _permit: Option<OwnedSemaphorePermit>,
}

impl<H, S, B> Conn<H, S>
where
    H: Handshake,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>> + Send + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    async fn run(mut self, tcp: TcpStream) -> Result<(), Box<dyn StdError + Send + Sync>> {
        let accepted = Instant::now();
        let io = match tokio::time::timeout(
            self.config.handshake_timeout,
            self.handshake.handshake(tcp),
        )
        .await
        {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err("handshake timed out".into()),
        };
        let activity = Arc::new(Activity::new(accepted));
        let service = Tracked {
            inner: self.service.clone(),
            activity: activity.clone(),
        };
        let conn = self
            .builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        tokio::pin!(conn);
        let limits = Watchdog {
            first_head: self.config.header_read_timeout,
            idle: self.config.idle_timeout,
        };
        // Set when the watchdog asked the connection to close: past it, a
        // connection still open with nothing in flight is dropped.
        let mut close_by: Option<Instant> = None;
        let mut stopping = false;
        loop {
            tokio::select! {
                done = conn.as_mut() => return done,
                _ = self.stop.changed(), if !stopping => {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = limits.expired(&activity), if !stopping && close_by.is_none() => {
                    close_by = Some(Instant::now() + limits.period());
                    conn.as_mut().graceful_shutdown();
                }
                _ = sleep_until_some(close_by) => {
                    if activity.in_flight.load(Ordering::Acquire) == 0 {
                        return Ok(());
                    }
                    close_by = None;
                }
            }
        }
    }
}

/// Sleeps until `at`; never, without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Whether a connection has a request in flight, and since when it has not.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// Whether any request head has arrived.
    any_request: AtomicBool,
    accepted: Instant,
    /// When the last request in flight finished (or the accept).
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn new(accepted: Instant) -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            any_request: AtomicBool::new(false),
            accepted,
            idle_since: Mutex::new(accepted),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.any_request.store(true, Ordering::Release);
        Busy(self.clone())
    }
}

/// A request in flight on a connection, from its head until its response
/// body is sent or dropped.
#[derive(Debug)]
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut since = self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *since = Instant::now();
        }
    }
}

/// The connection timeouts that apply while no request is in flight.
#[derive(Debug, Clone, Copy)]
struct Watchdog {
    /// From the accept until the first request head.
    first_head: Option<Duration>,
    /// From the end of the last request.
    idle: Option<Duration>,
}

impl Watchdog {
    /// When the connection runs out of time as things stand, if it can.
    fn deadline(&self, a: &Activity) -> Option<Instant> {
        if a.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle = self
            .idle
            .map(|d| *a.idle_since.lock().unwrap_or_else(|e| e.into_inner()) + d);
        let first = self
            .first_head
            .filter(|_| !a.any_request.load(Ordering::Acquire))
            .map(|d| a.accepted + d);
        match (idle, first) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        }
    }

    /// The shortest timeout: how often a busy connection is looked at, and
    /// how long one asked to close has before it is dropped.
    fn period(&self) -> Duration {
        match (self.first_head, self.idle) {
            (Some(x), Some(y)) => x.min(y),
            (x, y) => x.or(y).unwrap_or(Duration::MAX),
        }
    }

    /// Resolves once the connection has run out of time (never, without
    /// timeouts).
    async fn expired(&self, a: &Activity) {
        if self.first_head.is_none() && self.idle.is_none() {
            return std::future::pending().await;
        }
        loop {
            match self.deadline(a) {
                Some(d) if d <= Instant::now() => return,
                Some(d) => tokio::time::sleep_until(d).await,
                // Busy: look again later.
                None => tokio::time::sleep(self.period()).await,
            }
        }
    }
}

/// The service of a connection, counting its requests in flight.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body + Unpin,
{
    type Response = Response<Guarded<B, Busy>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let busy = self.activity.begin();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let resp = answer.await?;
            Ok(resp.map(|inner| Guarded::new(inner, busy)))
        })
    }
}

/// A response body that keeps a value alive (a guard: a request counted as
/// in flight, a concurrency slot) until the body has been sent or dropped.
pub struct Guarded<B, G> {
    inner: B,
    _guard: G,
}

impl<B, G> Guarded<B, G> {
    /// Wraps `inner`, keeping `guard` alive with it.
    pub fn new(inner: B, guard: G) -> Self {
        Guarded {
            inner,
            _guard: guard,
        }
    }
}

impl<B: Body + Unpin, G: Unpin> Body for Guarded<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The default configuration with one change.
    fn with(change: impl FnOnce(&mut ServeConfig)) -> ServeConfig {
        let mut c = ServeConfig::default();
        change(&mut c);
        c
    }

    use std::convert::Infallible;
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers "ok" after `delay`, counting requests at once.
    #[derive(Clone)]
    struct Slow {
        delay: Duration,
        now: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
    }

    impl Slow {
        fn new(delay: Duration) -> Self {
            Slow {
                delay,
                now: Arc::default(),
                most: Arc::default(),
            }
        }
    }

    impl Service<Request<Incoming>> for Slow {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = BoxFuture<Result<Self::Response, Infallible>>;

        fn call(&self, _req: Request<Incoming>) -> Self::Future {
            let (delay, now, most) = (self.delay, self.now.clone(), self.most.clone());
            Box::pin(async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
            })
        }
    }

    struct Running {
        addr: SocketAddr,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Running {
        async fn shutdown(mut self) {
            let _ = self.stop.take().unwrap().send(());
            self.task.await.unwrap();
        }
    }

    async fn start<H: Handshake>(config: ServeConfig, handshake: H, svc: Slow) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, config, handshake, svc, async {
            let _ = rx.await;
        }));
        Running {
            addr,
            stop: Some(tx),
            task,
        }
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";

    /// Sends one HTTP/1.1 request on `s` and reads the answer's head.
    async fn get(s: &mut TcpStream) -> String {
        s.write_all(GET).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Whether the peer closed `s` within `within`.
    async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(within, s.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[test]
    fn defaults_are_hypers_own() {
        let c = ServeConfig::default();
        assert_eq!(c.max_connections, None);
        assert_eq!(c.header_read_timeout, None);
        assert_eq!(c.idle_timeout, None);
        assert_eq!(c.http2_max_concurrent_streams, None);
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
    }

    #[tokio::test]
    async fn serves_then_drains_on_shutdown_and_refuses_new_connections() {
        let svc = Slow::new(Duration::from_millis(300));
        let s = start(ServeConfig::default(), PlainTcp, svc).await;
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(GET).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let addr = s.addr;
        let stop = tokio::spawn(s.shutdown());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(addr).await.is_err());
        let mut buf = vec![0u8; 1024];
        let n = c.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        stop.await.unwrap();
    }

    #[tokio::test]
    async fn connection_cap_holds_back_the_next_connection() {
        let cfg = with(|c| c.max_connections = Some(1));
        let s = start(cfg, PlainTcp, Slow::new(Duration::ZERO)).await;
        let mut first = TcpStream::connect(s.addr).await.unwrap();
        assert!(get(&mut first).await.starts_with("HTTP/1.1 200"));
        // The second connection is accepted by the kernel but not served.
        let mut second = TcpStream::connect(s.addr).await.unwrap();
        second.write_all(GET).await.unwrap();
        let mut buf = vec![0u8; 1024];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf))
                .await
                .is_err(),
            "served beyond the cap"
        );
        // Once the first closes, the second is served.
        drop(first);
        let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        s.shutdown().await;
    }

    #[tokio::test]
    async fn header_read_timeout_closes_silent_and_slow_heads() {
        let cfg = with(|c| c.header_read_timeout = Some(Duration::from_millis(200)));
        let s = start(cfg, PlainTcp, Slow::new(Duration::ZERO)).await;
        // Nothing at all.
        let mut silent = TcpStream::connect(s.addr).await.unwrap();
        assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
        // Half a head.
        let mut slow = TcpStream::connect(s.addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost").await.unwrap();
        assert!(closed_within(&mut slow, Duration::from_secs(3)).await);
        // A whole one is answered.
        let mut ok = TcpStream::connect(s.addr).await.unwrap();
        assert!(get(&mut ok).await.starts_with("HTTP/1.1 200"));
        s.shutdown().await;
    }

    #[tokio::test]
    async fn idle_timeout_closes_idle_connections_but_not_busy_ones() {
        let cfg = with(|c| c.idle_timeout = Some(Duration::from_millis(200)));
        let s = start(cfg, PlainTcp, Slow::new(Duration::from_millis(600))).await;
        // A request longer than the idle timeout is answered in full.
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        assert!(get(&mut c).await.starts_with("HTTP/1.1 200"));
        // Then, idle, the connection is closed.
        assert!(closed_within(&mut c, Duration::from_secs(3)).await);
        s.shutdown().await;
    }

    #[tokio::test]
    async fn without_timeouts_an_idle_connection_stays_open() {
        let s = start(ServeConfig::default(), PlainTcp, Slow::new(Duration::ZERO)).await;
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        assert!(get(&mut c).await.starts_with("HTTP/1.1 200"));
        assert!(!closed_within(&mut c, Duration::from_millis(500)).await);
        assert!(get(&mut c).await.starts_with("HTTP/1.1 200"));
        drop(c);
        s.shutdown().await;
    }

    /// A handshake that never completes.
    #[derive(Clone)]
    struct Stuck;

    impl Handshake for Stuck {
        type Io = TcpStream;
        fn handshake(
            &self,
            _tcp: TcpStream,
        ) -> impl Future<Output = std::io::Result<TcpStream>> + Send {
            std::future::pending()
        }
    }

    #[tokio::test]
    async fn handshake_timeout_drops_the_connection() {
        let cfg = with(|c| c.handshake_timeout = Duration::from_millis(200));
        let s = start(cfg, Stuck, Slow::new(Duration::ZERO)).await;
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        assert!(closed_within(&mut c, Duration::from_secs(3)).await);
        s.shutdown().await;
    }

    #[tokio::test]
    async fn http2_streams_are_capped_per_connection() {
        let cfg = with(|c| c.http2_max_concurrent_streams = Some(1));
        let svc = Slow::new(Duration::from_millis(200));
        let most = svc.most.clone();
        let s = start(cfg, PlainTcp, svc).await;
        let tcp = TcpStream::connect(s.addr).await.unwrap();
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let call = |mut send: hyper::client::conn::http2::SendRequest<_>| async move {
            send.ready().await?;
            let req = Request::get("http://x/")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let resp = send.send_request(req).await?;
            Ok::<_, hyper::Error>(resp.into_body().collect().await?.to_bytes())
        };
        // The first request also brings the server's SETTINGS.
        assert_eq!(&call(send.clone()).await.unwrap()[..], b"ok");
        // Then the client keeps to one stream at a time: every request is
        // served, never two at once.
        let calls: Vec<_> = (0..3).map(|_| tokio::spawn(call(send.clone()))).collect();
        for c in calls {
            assert_eq!(&c.await.unwrap().unwrap()[..], b"ok");
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
        drop(send);
        s.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn watchdog_deadlines() {
        let w = Watchdog {
            first_head: Some(Duration::from_secs(1)),
            idle: Some(Duration::from_secs(5)),
        };
        let a = Arc::new(Activity::new(Instant::now()));
        let t0 = Instant::now();
        // Before any request: the earlier of the two.
        assert_eq!(w.deadline(&a), Some(t0 + Duration::from_secs(1)));
        let busy = a.begin();
        assert_eq!(w.deadline(&a), None);
        tokio::time::advance(Duration::from_secs(2)).await;
        drop(busy);
        // After a request: idle time only, from its end.
        assert_eq!(w.deadline(&a), Some(t0 + Duration::from_secs(7)));
        let none = Watchdog {
            first_head: None,
            idle: None,
        };
        assert_eq!(none.deadline(&a), None);
    }
}
