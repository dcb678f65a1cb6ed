//! Small builders for the stages' unit tests: a gateway with no listener
//! and no configuration source, endpoints, deployments and clients.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use medembed_api::ResponseFormat;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::balance::{Registry, Worker};
use crate::proxy::Outgoing;
use crate::server::Gateway;
use crate::table::{AuthMode, Client, ClientQuota, Deployment, Endpoint, KeySlot, Tables};
use crate::GatewayConfig;

/// A gateway's shared state, serving nothing.
pub fn gateway() -> Arc<Gateway> {
    gateway_with(GatewayConfig::for_file("/nonexistent/gateway.yaml"))
}

/// A gateway's shared state for `cfg`, serving nothing.
pub fn gateway_with(cfg: GatewayConfig) -> Arc<Gateway> {
    Arc::new(
        Gateway::new(
            cfg,
            Arc::new(Tables::default()),
            Arc::new(Registry::default()),
        )
        .unwrap(),
    )
}

/// An endpoint `id` in Key mode (path `/endpoints/{id}`), changed by `f`.
pub fn endpoint(id: &str, f: impl FnOnce(&mut Endpoint)) -> Endpoint {
    let mut e = Endpoint {
        id: id.into(),
        hosts: Vec::new(),
        path_prefix: format!("/endpoints/{id}"),
        auth: AuthMode::Key,
        token: None,
        traffic: Vec::new(),
        mirror: None,
        timeout: Duration::from_secs(10),
        max_body_bytes: 1 << 20,
        max_rows: 64,
        default_quota: None,
        response_format: ResponseFormat::default(),
        deployments: BTreeMap::new(),
    };
    f(&mut e);
    e
}

/// A deployment with these workers.
pub fn deployment(name: &str, workers: Vec<Arc<Worker>>) -> Arc<Deployment> {
    Arc::new(Deployment {
        name: name.into(),
        workers,
    })
}

/// A client with one key, allowed on `endpoints`.
pub fn client(id: &str, key: &str, endpoints: &[&str], quota: Option<ClientQuota>) -> Client {
    Client {
        id: id.into(),
        endpoints: endpoints
            .iter()
            .map(|e| e.to_string())
            .collect::<HashSet<_>>(),
        key_hashes: vec![(Sha256::digest(key.as_bytes()).into(), KeySlot::Primary)],
        token: None,
        quota,
        dry_run: false,
    }
}

/// A small request on its way upstream, due in five seconds.
pub fn outgoing() -> Outgoing {
    Outgoing {
        body: Bytes::from_static(br#"{"input_data":{}}"#),
        content_type: None,
        traceparent: crate::trace::TraceContext::from_header(None).header(),
        request_id: HeaderValue::from_static("req-1"),
        response_format: ResponseFormat::default(),
        deadline: Instant::now() + Duration::from_secs(5),
    }
}
