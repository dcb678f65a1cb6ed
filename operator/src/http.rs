//! The operator's own HTTP endpoints: `/healthz` (the process runs),
//! `/readyz` (it reached the API server, and as leader its controllers run)
//! and `/metrics` (Prometheus text).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use medembed_api::serve::{PlainTcp, ServeConfig};
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// What the HTTP endpoints report.
#[derive(Debug)]
pub struct Health {
    /// Set once the API server answered.
    pub ready: AtomicBool,
    /// The metrics.
    pub metrics: Metrics,
}

fn reply(code: StatusCode, ctype: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    if let Ok(v) = http::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(
    health: Arc<Health>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = "text/plain; charset=utf-8";
    Ok(match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/healthz") => reply(StatusCode::OK, text, "ok\n".into()),
        (&http::Method::GET, "/readyz") => {
            if health.ready.load(Ordering::Acquire) {
                reply(StatusCode::OK, text, "ready\n".into())
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, text, "not ready\n".into())
            }
        }
        (&http::Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            health.metrics.render(),
        ),
        _ => reply(StatusCode::NOT_FOUND, text, "not found\n".into()),
    })
}

/// Serves the endpoints on `listener` until `shutdown` resolves (through the
/// shared accept loop, `medembed_api::serve`).
pub async fn serve(
    health: Arc<Health>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let config = ServeConfig {
        shutdown_grace: std::time::Duration::from_secs(5),
        ..ServeConfig::default()
    };
    let svc = service_fn(move |req| handle(health.clone(), req));
    medembed_api::serve::serve(listener, config, PlainTcp, svc, shutdown).await;
}
