//! The request path, composed in one place: [`Gateway::handle`] and the
//! functions below it read top to bottom as the stages a request goes
//! through. Each stage is a small function in its own module, returning
//! `Result<_, GatewayError>`; the first refusal ends the path, and
//! [`respond::finish`] answers it ([`crate::error`] decides how).
//!
//! ```text
//! connection   medembed_api::serve     connection cap, TLS handshake, header-read
//!                                      and idle timeouts, HTTP/2 streams
//! ids          respond::RequestIds     x-request-id, x-ms-client-request-id
//! own paths    route::admin            /livez /readyz; /metrics (the admin
//!                                      listener's only, when there is one)
//! routing      route::endpoint         host or path prefix -> endpoint    404
//!              route::require_post                                        405
//! auth         auth::caller            key or token -> client, quota      401 403
//! concurrency  admit::slot             client's requests in flight        429
//! rate         quota::check            requests per minute                429
//! body         body::read              size (declared, streamed), time,   413 408
//!                                      global byte budget                 503
//! parse        parse::count            rows and images, row cap           400
//! quota        quota::check            images and bytes per minute        429
//! choose       choose::deployment      pin header, else traffic weights   404 503
//!              choose::mirror          background copy to the mirror
//! forward      forward::forward        one worker, one retry on another   502 503 408
//! respond      respond::relay/finish   headers, metrics, audit line
//! ```
//!
//! Dry run: the concurrency and quota stages return [`Admitted`] values; a
//! refusal they waived is counted (`Gateway::waive`) and the request goes
//! on.

pub mod admit;
pub mod auth;
pub mod body;
pub mod choose;
pub mod forward;
pub mod parse;
pub mod quota;
pub mod respond;
pub mod route;
#[cfg(test)]
pub(crate) mod testing;

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::error::{Admitted, GatewayError};
use crate::quota::Cost;
use crate::server::{Body, Gateway, Listener};
use crate::table::{Endpoint, Table};
use respond::{Facts, InFlight, RequestIds};

impl Gateway {
    /// Answers one request that came in on `listener`: the service of
    /// every connection. The admin listener serves the gateway's own paths
    /// only.
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        listener: Listener,
    ) -> Response<Body> {
        let ids = RequestIds::of(req.headers());
        let http1 = req.version() < http::Version::HTTP_2;
        let resp = match (route::admin(self, &req, listener), listener) {
            (Some(own), _) => own,
            (None, Listener::Admin) => GatewayError::NoRoute.to_response(),
            (None, Listener::Public) => self.score(req, &ids).await,
        };
        let mut resp = ids.stamp(resp);
        // Draining: each HTTP/1.1 client moves its next request to another
        // replica (HTTP/2 clients get GOAWAY when the listener closes).
        if http1 && self.draining.load(std::sync::atomic::Ordering::Acquire) {
            resp.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        resp
    }

    /// A request for an endpoint: routed, then admitted and forwarded,
    /// counted and audited either way.
    async fn score(self: &Arc<Self>, req: Request<Incoming>, ids: &RequestIds) -> Response<Body> {
        let table = self.tables.get();
        let endpoint = match route::endpoint(&table, &req) {
            Ok(e) => e,
            // No endpoint: nothing to count it against, nothing to audit.
            Err(e) => return e.to_response(),
        };
        let mut facts = Facts::new(&endpoint, req.headers(), ids);
        let in_flight = InFlight::enter(&self.metrics, &endpoint.id);
        let outcome = self
            .admit_and_forward(&table, &endpoint, req, &mut facts, in_flight)
            .await;
        respond::finish(&self.metrics, &self.audit, &facts, outcome)
    }

    /// The stages from authentication to the worker's answer.
    async fn admit_and_forward(
        self: &Arc<Self>,
        table: &Table,
        endpoint: &Arc<Endpoint>,
        req: Request<Incoming>,
        facts: &mut Facts,
        in_flight: InFlight,
    ) -> Result<Response<Body>, GatewayError> {
        let (head, body) = req.into_parts();
        route::require_post(&head)?;

        let dry_run_all = self.config.quota_dry_run;
        let caller = auth::caller(&self.jwks, table, endpoint, &head.headers, dry_run_all).await?;
        facts.client = caller.id.clone();

        let replicas = self.replicas.get();
        let slot = self.waive(facts, admit::slot(&self.concurrency, &caller, replicas)?);
        // Requests per minute before the body: a throttled client costs no
        // body buffer.
        let on_failure = self.config.quota_store_failure;
        let rate = quota::check(
            &self.quota,
            &caller,
            replicas,
            &quota::BEFORE_BODY,
            &Cost::request(),
            on_failure,
        )
        .await?;
        // A waived rate check (dry run, or the store down) skips the second
        // one: one refusal is counted per request, as enforcing would have
        // ended it here, and a store that is down is not waited for twice.
        let rate_waived = rate.waived.is_some();
        self.waive(facts, rate);

        let deadline = facts.arrived + endpoint.timeout;
        let limits = body::BodyLimits::new(endpoint, &caller.quota, deadline, &self.body_budget);
        let body = body::read(body, &head.headers, &limits).await?;
        facts.bytes = body.len() as u64;

        let counts = parse::count(&body, parse::row_cap(endpoint, &caller.quota)).await?;
        (facts.rows, facts.images) = (counts.rows, counts.images);

        if !rate_waived {
            let cost = Cost::new(counts.images as u64, facts.bytes);
            let admitted = quota::check(
                &self.quota,
                &caller,
                replicas,
                &quota::AFTER_PARSE,
                &cost,
                on_failure,
            )
            .await?;
            self.waive(facts, admitted);
        }
        respond::count_admitted(&self.metrics, facts);

        let pinned = choose::pinned(&head.headers);
        let deployment = choose::deployment(endpoint, pinned.as_deref())?;
        facts.deployment = deployment.name.clone();
        let out = forward::outgoing(&head, body, facts, endpoint, deadline);
        let mirror = choose::mirror(self, endpoint, &out, pinned.as_deref());

        let answer = forward::forward(self, endpoint, &deployment, &out, mirror).await?;
        Ok(respond::relay(answer, &deployment.name, (slot, in_flight)))
    }

    /// Lets a request through a check, counting the refusal it waived.
    fn waive<T>(&self, facts: &Facts, admitted: Admitted<T>) -> T {
        if let Some(e) = &admitted.waived {
            respond::count_waived(&self.metrics, facts, e);
        }
        admitted.value
    }
}
