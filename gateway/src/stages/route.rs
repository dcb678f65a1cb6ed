//! Routing: the gateway's own paths, and which endpoint a request is for.
//!
//! `GET /livez`, `/readyz` and `/metrics` are the gateway's own and are
//! answered before anything else. With an admin listener configured,
//! `/metrics` is answered there only: on the scoring listener it is the
//! API's JSON 404, like any path no endpoint serves (the admin listener
//! serves nothing else). `/livez` and `/readyz` are answered on both, for
//! load balancers in front of the scoring port. Any other request is
//! for an endpoint: by host name when the path is `/score` (as the managed
//! service routes), else by path prefix, `PREFIX/score`
//! ([`Table::route`]). Routing reads only the method, host and path, so a
//! request that routes nowhere costs nothing more. The scoring route takes
//! `POST` only.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::request::Parts;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use crate::error::GatewayError;
use crate::server::{full, Body, Gateway, Listener};
use crate::table::{Endpoint, Table};

/// The answer to one of the gateway's own paths, if `req`, which came in on
/// `listener`, is for one.
pub fn admin<B>(gw: &Gateway, req: &Request<B>, listener: Listener) -> Option<Response<Body>> {
    if req.method() != Method::GET {
        return None;
    }
    match req.uri().path() {
        "/livez" => Some(text(StatusCode::OK, "ok")),
        "/readyz" => Some(if gw.draining.load(Ordering::Acquire) {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining")
        } else {
            text(StatusCode::OK, "ok")
        }),
        "/metrics" if listener == Listener::Public && gw.config.admin_listen.is_some() => {
            Some(GatewayError::NoRoute.to_response())
        }
        "/metrics" => {
            gw.metrics.workers.set(gw.registry.all().len() as i64);
            let held = i64::try_from(gw.body_budget.held()).unwrap_or(i64::MAX);
            gw.metrics.body_bytes_held.set(held);
            let mut r = Response::new(full(gw.metrics.render()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            Some(r)
        }
        _ => None,
    }
}

fn text(status: StatusCode, s: &'static str) -> Response<Body> {
    let mut r = Response::new(full(s));
    *r.status_mut() = status;
    r
}

/// The endpoint `req` addresses, by its `Host` (or the URI's authority) and
/// path.
pub fn endpoint<B>(table: &Table, req: &Request<B>) -> Result<Arc<Endpoint>, GatewayError> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host());
    table
        .route(host, req.uri().path())
        .cloned()
        .ok_or(GatewayError::NoRoute)
}

/// Scoring is `POST` only.
pub fn require_post(head: &Parts) -> Result<(), GatewayError> {
    if head.method == Method::POST {
        Ok(())
    } else {
        Err(GatewayError::MethodNotAllowed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use http_body_util::BodyExt;

    use crate::stages::testing;

    fn req(method: &str, host: Option<&str>, uri: &str) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).unwrap()
    }

    fn table() -> Table {
        let chest = testing::endpoint("chest", |e| {
            e.hosts = vec!["chest.example.org".into()];
            e.path_prefix = "/endpoints/chest".into();
        });
        let brain = testing::endpoint("brain", |e| {
            e.path_prefix = "/endpoints/imaging/brain".into();
        });
        Table::new(vec![chest, brain], Vec::new())
    }

    #[test]
    fn by_host_name_on_slash_score() {
        let t = table();
        for host in ["chest.example.org", "Chest.Example.Org:443"] {
            let e = endpoint(&t, &req("POST", Some(host), "/score")).unwrap();
            assert_eq!(e.id, "chest");
        }
        // The URI's authority counts when there is no Host header (HTTP/2).
        let e = endpoint(&t, &req("POST", None, "https://chest.example.org/score")).unwrap();
        assert_eq!(e.id, "chest");
        // A host routes /score only.
        assert_eq!(
            endpoint(&t, &req("POST", Some("chest.example.org"), "/other")).unwrap_err(),
            GatewayError::NoRoute
        );
    }

    #[test]
    fn by_path_prefix() {
        let t = table();
        let e = endpoint(&t, &req("POST", None, "/endpoints/imaging/brain/score")).unwrap();
        assert_eq!(e.id, "brain");
        let e = endpoint(
            &t,
            &req("POST", Some("other.example"), "/endpoints/chest/score"),
        )
        .unwrap();
        assert_eq!(e.id, "chest");
        for miss in [
            "/endpoints/nope/score",
            "/endpoints/imaging/score",
            "/endpoints/chest",
            "/score",
        ] {
            assert_eq!(
                endpoint(&t, &req("POST", Some("other.example"), miss)).unwrap_err(),
                GatewayError::NoRoute,
                "{miss}"
            );
        }
    }

    #[test]
    fn scoring_is_post_only() {
        let head = |m| req(m, None, "/score").into_parts().0;
        assert!(require_post(&head("POST")).is_ok());
        for m in ["GET", "PUT", "DELETE"] {
            assert_eq!(
                require_post(&head(m)).unwrap_err(),
                GatewayError::MethodNotAllowed
            );
        }
    }

    #[tokio::test]
    async fn own_paths() {
        let gw = testing::gateway();
        let get = |p| req("GET", None, p);
        let body = |r: Response<Body>| async move {
            String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
        };
        let public = Listener::Public;
        let r = admin(&gw, &get("/livez"), public).unwrap();
        assert_eq!(r.status(), 200);
        let r = admin(&gw, &get("/readyz"), public).unwrap();
        assert_eq!(r.status(), 200);
        gw.draining.store(true, Ordering::Release);
        let r = admin(&gw, &get("/readyz"), public).unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(body(r).await, "draining");
        // Without an admin listener, metrics are on the scoring listener.
        let r = admin(&gw, &get("/metrics"), public).unwrap();
        assert_eq!(r.headers()["content-type"], "text/plain; version=0.0.4");
        let text = body(r).await;
        assert!(text.contains("medembed_gateway_workers 0"));
        assert!(text.contains("medembed_gateway_body_bytes_held 0"));
        // Anything else, or another method, is for routing.
        assert!(admin(&gw, &get("/score"), public).is_none());
        assert!(admin(&gw, &req("POST", None, "/livez"), public).is_none());
    }

    #[tokio::test]
    async fn with_an_admin_listener_metrics_are_served_there_only() {
        let mut cfg = crate::GatewayConfig::for_file("unused.yaml");
        cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        let gw = testing::gateway_with(cfg);
        let get = |p| req("GET", None, p);
        let r = admin(&gw, &get("/metrics"), Listener::Public).unwrap();
        assert_eq!(r.status(), 404);
        let b = r.into_body().collect().await.unwrap().to_bytes();
        let b: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(b["error"]["code"], "not_found");
        let r = admin(&gw, &get("/metrics"), Listener::Admin).unwrap();
        assert_eq!(r.status(), 200);
        for p in ["/livez", "/readyz"] {
            for l in [Listener::Public, Listener::Admin] {
                assert_eq!(admin(&gw, &get(p), l).unwrap().status(), 200, "{p} {l:?}");
            }
        }
    }
}
