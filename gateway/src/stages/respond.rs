//! Respond: what every answer carries, and what every request leaves
//! behind.
//!
//! - Ids ([`RequestIds`]): every answer, success or refusal, carries
//!   `x-request-id` (the client's own when usable, else a new UUID; the
//!   worker and the audit line get the same) and echoes
//!   `x-ms-client-request-id` when sent.
//! - A worker's answer ([`relay`]) is passed on as it streams, without
//!   hop-by-hop headers, naming the deployment in
//!   `azureml-model-deployment`; its body holds the request's guards
//!   (worker in-flight count, concurrency slot, in-flight gauge) until it
//!   has been sent.
//! - A refusal ([`finish`]) is answered by [`GatewayError::to_response`],
//!   naming the deployment when one was chosen, and counted under its
//!   reason.
//! - Every request that reached an endpoint is counted (requests, duration)
//!   and leaves one audit line ([`audit_record`]) built from its [`Facts`]:
//!   never the payload, never a credential.

use std::time::{Duration, SystemTime};

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::audit::{rfc3339, AuditLog, AuditRecord};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::proxy::{Answer, Guarded};
use crate::server::Body;
use crate::table::Endpoint;
use crate::trace::TraceContext;

/// The ids every answer carries.
#[derive(Debug, Clone)]
pub struct RequestIds {
    /// `x-request-id`: the client's when usable, else a new UUID.
    pub request_id: HeaderValue,
    /// `x-ms-client-request-id`, echoed as sent.
    pub client_request_id: Option<HeaderValue>,
}

impl RequestIds {
    /// The ids of a request with these headers.
    pub fn of(headers: &HeaderMap) -> Self {
        let id = medembed_api::request_id::accept_or_new(
            headers
                .get(medembed_api::REQUEST_ID_HEADER)
                .map(HeaderValue::as_bytes),
        );
        RequestIds {
            // Only ASCII letters, digits and `._:-`: always a valid value.
            request_id: HeaderValue::from_str(&id)
                .unwrap_or_else(|_| HeaderValue::from_static("-")),
            client_request_id: headers.get(medembed_api::CLIENT_REQUEST_ID_HEADER).cloned(),
        }
    }

    /// Puts the ids on an answer.
    pub fn stamp<B>(&self, mut resp: Response<B>) -> Response<B> {
        let h = resp.headers_mut();
        h.insert(medembed_api::REQUEST_ID_HEADER, self.request_id.clone());
        if let Some(v) = &self.client_request_id {
            h.insert(medembed_api::CLIENT_REQUEST_ID_HEADER, v.clone());
        }
        resp
    }
}

/// What the metrics and the audit line need to know about a request,
/// filled in by the stages as it goes.
#[derive(Debug, Clone)]
pub struct Facts {
    /// When it arrived.
    pub arrived: Instant,
    /// When it arrived, on the wall clock.
    pub time: SystemTime,
    /// Its trace context.
    pub trace: TraceContext,
    /// Its `x-request-id`.
    pub request_id: HeaderValue,
    /// The endpoint's id.
    pub endpoint: String,
    /// The caller's name (`-` until authenticated).
    pub client: String,
    /// The chosen deployment (`-` until chosen).
    pub deployment: String,
    /// Rows in the request (0 until parsed).
    pub rows: usize,
    /// Images in the request.
    pub images: usize,
    /// Body bytes (0 until read).
    pub bytes: u64,
}

impl Facts {
    /// A request to `endpoint` with these headers, arriving now.
    pub fn new(endpoint: &Endpoint, headers: &HeaderMap, ids: &RequestIds) -> Self {
        Facts {
            arrived: Instant::now(),
            time: SystemTime::now(),
            trace: TraceContext::from_header(
                headers.get("traceparent").and_then(|v| v.to_str().ok()),
            ),
            request_id: ids.request_id.clone(),
            endpoint: endpoint.id.clone(),
            client: "-".into(),
            deployment: "-".into(),
            rows: 0,
            images: 0,
            bytes: 0,
        }
    }
}

/// Counts a request in `medembed_gateway_in_flight_requests` until dropped.
#[derive(Debug)]
pub struct InFlight(prometheus::IntGauge);

impl InFlight {
    /// Counts one more request in flight to `endpoint`.
    pub fn enter(metrics: &Metrics, endpoint: &str) -> Self {
        let g = metrics.in_flight.with_label_values(&[endpoint]);
        g.inc();
        InFlight(g)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counts a refusal that dry run (or failing open) waived.
pub fn count_waived(metrics: &Metrics, facts: &Facts, waived: &GatewayError) {
    metrics
        .rejections
        .with_label_values(&[&facts.endpoint, &facts.client, waived.reason(), "false"])
        .inc();
}

/// Counts an admitted request's images and bytes.
pub fn count_admitted(metrics: &Metrics, facts: &Facts) {
    metrics
        .images
        .with_label_values(&[&facts.endpoint, &facts.client])
        .inc_by(facts.images as u64);
    metrics
        .request_bytes
        .with_label_values(&[&facts.endpoint, &facts.client])
        .inc_by(facts.bytes);
}

/// Hop-by-hop headers describe the worker's connection, not the answer.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TE,
        header::TRAILER,
        header::PROXY_AUTHENTICATE,
    ] {
        h.remove(name);
    }
    h.remove("keep-alive");
}

fn name_deployment<B>(resp: &mut Response<B>, deployment: &str) {
    if let Ok(v) = HeaderValue::from_str(deployment) {
        resp.headers_mut()
            .insert(medembed_api::DEPLOYMENT_HEADER, v);
    }
}

/// The head of a worker's answer as the client gets it.
fn relayed_head<B>(resp: &mut Response<B>, deployment: &str) {
    strip_hop_by_hop(resp.headers_mut());
    name_deployment(resp, deployment);
}

/// The worker's answer for the client: streamed as it comes, keeping
/// `guards` until it has been sent.
pub fn relay(
    answer: Answer,
    deployment: &str,
    guards: impl Send + Sync + 'static,
) -> Response<Body> {
    let mut resp = answer.response;
    relayed_head(&mut resp, deployment);
    let guards: Box<dyn Send + Sync> = Box::new((answer.in_flight, guards));
    resp.map(|incoming| Guarded::new(incoming, guards).boxed_unsync())
}

/// Counts and audits a request that reached an endpoint, and turns a
/// refusal into its answer.
pub fn finish(
    metrics: &Metrics,
    audit: &AuditLog,
    facts: &Facts,
    outcome: Result<Response<Body>, GatewayError>,
) -> Response<Body> {
    match outcome {
        Ok(resp) => {
            record(metrics, audit, facts, resp.status(), None);
            resp
        }
        Err(e) => {
            metrics
                .rejections
                .with_label_values(&[&facts.endpoint, &facts.client, e.reason(), "true"])
                .inc();
            record(metrics, audit, facts, e.status(), Some(e.reason()));
            let mut resp = e.to_response();
            if facts.deployment != "-" {
                name_deployment(&mut resp, &facts.deployment);
            }
            resp
        }
    }
}

fn record(
    metrics: &Metrics,
    audit: &AuditLog,
    facts: &Facts,
    status: StatusCode,
    reason: Option<&'static str>,
) {
    let elapsed = facts.arrived.elapsed();
    metrics
        .requests
        .with_label_values(&[
            &facts.endpoint,
            &facts.deployment,
            &facts.client,
            status.as_str(),
        ])
        .inc();
    metrics
        .request_duration
        .with_label_values(&[&facts.endpoint, &facts.deployment])
        .observe(elapsed.as_secs_f64());
    audit.record(audit_record(facts, status, reason, elapsed));
}

/// The audit line of a request.
pub fn audit_record(
    facts: &Facts,
    status: StatusCode,
    reason: Option<&'static str>,
    elapsed: Duration,
) -> AuditRecord {
    AuditRecord {
        time: rfc3339(facts.time),
        client: facts.client.clone(),
        endpoint: facts.endpoint.clone(),
        deployment: facts.deployment.clone(),
        status: status.as_u16(),
        rows: facts.rows,
        images: facts.images,
        bytes: facts.bytes,
        latency_ms: (elapsed.as_secs_f64() * 1e6).round() / 1e3,
        trace_id: facts.trace.trace_id.clone(),
        request_id: facts.request_id.to_str().unwrap_or("-").to_string(),
        reason,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use crate::stages::testing;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn request_ids_keep_a_usable_id_else_make_one_and_echo_the_sdks() {
        let ids = RequestIds::of(&headers(&[
            ("x-request-id", "client-req-0001"),
            ("x-ms-client-request-id", "sdk-42"),
        ]));
        let r = ids.stamp(Response::new(()));
        assert_eq!(r.headers()["x-request-id"], "client-req-0001");
        assert_eq!(r.headers()["x-ms-client-request-id"], "sdk-42");
        for sent in [&[][..], &[("x-request-id", "Doe Jane")][..]] {
            let ids = RequestIds::of(&headers(sent));
            let r = ids.stamp(Response::new(()));
            let id = r.headers()["x-request-id"].to_str().unwrap();
            assert_eq!(id.len(), 36, "{id}");
            assert!(!r.headers().contains_key("x-ms-client-request-id"));
        }
        // An id the answer already carries (a worker's) is replaced.
        let mut up = Response::new(());
        up.headers_mut()
            .insert("x-request-id", HeaderValue::from_static("worker-id"));
        let ids = RequestIds::of(&headers(&[("x-request-id", "mine")]));
        assert_eq!(ids.stamp(up).headers()["x-request-id"], "mine");
    }

    #[test]
    fn a_relayed_answer_loses_hop_by_hop_headers_and_names_its_deployment() {
        let mut r = Response::new(());
        for (k, v) in [
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("proxy-authenticate", "Basic"),
            ("content-type", "application/json"),
            ("content-length", "2"),
            (medembed_api::DEPLOYMENT_HEADER, "worker-says"),
        ] {
            r.headers_mut().insert(k, HeaderValue::from_static(v));
        }
        relayed_head(&mut r, "blue");
        let mut names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["azureml-model-deployment", "content-length", "content-type"]
        );
        assert_eq!(r.headers()[medembed_api::DEPLOYMENT_HEADER], "blue");
    }

    fn facts() -> Facts {
        let e = testing::endpoint("chest", |_| {});
        let ids = RequestIds::of(&headers(&[
            ("x-request-id", "req-7"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ]));
        let mut f = Facts::new(
            &e,
            &headers(&[(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )]),
            &ids,
        );
        f.client = "radiology".into();
        f.rows = 3;
        f.images = 2;
        f.bytes = 1234;
        f
    }

    #[test]
    fn audit_record_fields() {
        let mut f = facts();
        f.deployment = "blue".into();
        let a = audit_record(&f, StatusCode::OK, None, Duration::from_micros(1500));
        assert_eq!(a.client, "radiology");
        assert_eq!(a.endpoint, "chest");
        assert_eq!(a.deployment, "blue");
        assert_eq!(a.status, 200);
        assert_eq!((a.rows, a.images, a.bytes), (3, 2, 1234));
        assert_eq!(a.latency_ms, 1.5);
        assert_eq!(a.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(a.request_id, "req-7");
        assert_eq!(a.reason, None);
        assert!(a.time.ends_with('Z'));
        let a = audit_record(
            &f,
            StatusCode::TOO_MANY_REQUESTS,
            Some("concurrency"),
            Duration::ZERO,
        );
        assert_eq!(a.reason, Some("concurrency"));
    }

    #[tokio::test]
    async fn a_refusal_is_answered_counted_and_audited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let metrics = Metrics::new().unwrap();
        let audit = AuditLog::open(path.to_str().unwrap(), metrics.clone()).unwrap();
        let mut f = facts();
        // Before a deployment is chosen: none named.
        let r = finish(
            &metrics,
            &audit,
            &f,
            Err(GatewayError::BodyTooLarge { limit: 10 }),
        );
        assert_eq!(r.status(), 413);
        assert!(!r.headers().contains_key(medembed_api::DEPLOYMENT_HEADER));
        // After: the deployment that failed is named.
        f.deployment = "blue".into();
        let e = GatewayError::Upstream {
            error: crate::stages::forward::UpstreamError::Broken,
            budget: Duration::from_secs(1),
        };
        let r = finish(&metrics, &audit, &f, Err(e));
        assert_eq!(r.status(), 502);
        assert_eq!(r.headers()[medembed_api::DEPLOYMENT_HEADER], "blue");
        let ok = finish(
            &metrics,
            &audit,
            &f,
            Ok(Response::new(crate::server::full("{}"))),
        );
        assert_eq!(ok.status(), 200);
        audit.close().await;
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["status"], 413);
        assert_eq!(lines[0]["reason"], "max_body");
        assert_eq!(lines[0]["deployment"], "-");
        assert_eq!(lines[1]["reason"], "upstream_failed");
        assert_eq!(lines[2]["status"], 200);
        assert!(lines[2].get("reason").is_none());
        let rejected = |reason: &str| {
            metrics
                .rejections
                .with_label_values(&["chest", "radiology", reason, "true"])
                .get()
        };
        assert_eq!(rejected("max_body"), 1);
        assert_eq!(rejected("upstream_failed"), 1);
        let answered = |dep: &str, status: &str| {
            metrics
                .requests
                .with_label_values(&["chest", dep, "radiology", status])
                .get()
        };
        assert_eq!(answered("-", "413"), 1);
        assert_eq!(answered("blue", "502"), 1);
        assert_eq!(answered("blue", "200"), 1);
    }

    #[test]
    fn waived_refusals_are_counted_as_not_enforced() {
        let metrics = Metrics::new().unwrap();
        let f = facts();
        count_waived(&metrics, &f, &GatewayError::TooManyConcurrent { limit: 1 });
        count_waived(&metrics, &f, &GatewayError::QuotaStoreUnavailable);
        let get = |reason: &str, enforced: &str| {
            metrics
                .rejections
                .with_label_values(&["chest", "radiology", reason, enforced])
                .get()
        };
        assert_eq!(get("concurrency", "false"), 1);
        assert_eq!(get("quota_store_error", "false"), 1);
        assert_eq!(get("concurrency", "true"), 0);
    }

    #[test]
    fn in_flight_gauge_follows_its_guards() {
        let metrics = Metrics::new().unwrap();
        let g = || metrics.in_flight.with_label_values(&["chest"]).get();
        let a = InFlight::enter(&metrics, "chest");
        let b = InFlight::enter(&metrics, "chest");
        assert_eq!(g(), 2);
        drop(a);
        drop(b);
        assert_eq!(g(), 0);
    }
}
