//! How many gateway replicas share the traffic, counted live.
//!
//! Without a shared quota store each replica enforces its share of every
//! per-minute limit, and every replica its share of every concurrency limit:
//! the limit divided by the number of replicas. A fixed `--replicas` is wrong
//! as soon as an autoscaler adds replicas (ten replicas each enforcing a
//! fifth of a limit admit twice the limit). With `--peers-service
//! NAMESPACE/NAME` the gateway counts the ready addresses of its own
//! Service's EndpointSlices instead, and every replica's share follows the
//! replicas actually serving. Until the first count arrives, and whenever
//! the Service has no ready address, `--replicas` is used.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};

/// Label naming the Service an EndpointSlice belongs to.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The number of replicas sharing the traffic, at least one.
#[derive(Debug)]
pub struct Replicas {
    configured: u32,
    live: AtomicU32,
}

impl Replicas {
    /// Fixed at `configured` until a live count replaces it.
    pub fn new(configured: u32) -> Self {
        Replicas {
            configured: configured.max(1),
            live: AtomicU32::new(0),
        }
    }

    /// The replicas to divide limits by: the live count when there is one,
    /// else the configured number.
    pub fn get(&self) -> u32 {
        match self.live.load(Ordering::Relaxed) {
            0 => self.configured,
            n => n,
        }
    }

    /// Records a live count (0: none known, fall back to the configured one).
    pub fn set_live(&self, n: u32) {
        let before = self.live.swap(n, Ordering::Relaxed);
        if before != n {
            tracing::info!(replicas = n, "gateway replicas sharing the traffic");
        }
    }
}

/// Ready, not terminating addresses of one EndpointSlice.
fn ready_addresses(s: &EndpointSlice) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for ep in s.endpoints.iter().flatten() {
        let c = ep.conditions.as_ref();
        // An unknown readiness counts as ready (the API's convention).
        let ready = c.and_then(|c| c.ready).unwrap_or(true);
        let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
        if ready && !terminating {
            if let Some(a) = ep.addresses.first() {
                out.insert(a.clone());
            }
        }
    }
    out
}

/// The replicas behind a Service: its slices' distinct ready addresses (a
/// pod appears in one slice per address family and port set).
fn count(slices: &BTreeMap<String, BTreeSet<String>>) -> u32 {
    let all: BTreeSet<&String> = slices.values().flatten().collect();
    u32::try_from(all.len()).unwrap_or(u32::MAX)
}

/// Parses `NAMESPACE/NAME`.
pub fn parse_service(s: &str) -> anyhow::Result<(String, String)> {
    parse_object("--peers-service", s)
}

/// Parses a flag's `NAMESPACE/NAME` value.
pub fn parse_object(flag: &str, s: &str) -> anyhow::Result<(String, String)> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => anyhow::bail!("{flag} wants NAMESPACE/NAME, got {s:?}"),
    }
}

/// Watches the EndpointSlices of Service `name` in `namespace` and keeps
/// `replicas` at its count of ready addresses.
pub fn watch(
    client: Client,
    namespace: &str,
    name: &str,
    replicas: Arc<Replicas>,
) -> tokio::task::JoinHandle<()> {
    let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().labels(&format!("{SERVICE_NAME_LABEL}={name}"));
    tokio::spawn(async move {
        let mut slices: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut fresh: Option<BTreeMap<String, BTreeSet<String>>> = None;
        // Backed off on errors (a forbidden or unreachable API is retried
        // with growing delays, not in a hot loop).
        let mut events = watcher::watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Init) => fresh = Some(BTreeMap::new()),
                Ok(Event::InitApply(s)) => {
                    if let Some(f) = fresh.as_mut() {
                        f.insert(s.name_any(), ready_addresses(&s));
                    }
                }
                Ok(Event::InitDone) => slices = fresh.take().unwrap_or_default(),
                Ok(Event::Apply(s)) => {
                    slices.insert(s.name_any(), ready_addresses(&s));
                }
                Ok(Event::Delete(s)) => {
                    slices.remove(&s.name_any());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watching the gateway's own Service; keeping the last replica count");
                    continue;
                }
            }
            if fresh.is_none() {
                replicas.set_live(count(&slices));
            }
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};

    fn slice(addrs: &[(&str, Option<bool>, bool)]) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: Some(
                addrs
                    .iter()
                    .map(|(a, ready, terminating)| Endpoint {
                        addresses: vec![a.to_string()],
                        conditions: Some(EndpointConditions {
                            ready: *ready,
                            terminating: Some(*terminating),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn counts_distinct_ready_addresses_across_slices() {
        let a = slice(&[
            ("10.0.0.1", Some(true), false),
            ("10.0.0.2", None, false),
            ("10.0.0.3", Some(false), false),
            ("10.0.0.4", Some(true), true),
        ]);
        // The same pod in a second slice (another port set) counts once.
        let b = slice(&[
            ("10.0.0.1", Some(true), false),
            ("10.0.0.5", Some(true), false),
        ]);
        let slices = BTreeMap::from([
            ("a".to_string(), ready_addresses(&a)),
            ("b".to_string(), ready_addresses(&b)),
        ]);
        assert_eq!(count(&slices), 3);
    }

    #[test]
    fn the_configured_number_holds_until_a_live_count() {
        let r = Replicas::new(2);
        assert_eq!(r.get(), 2);
        r.set_live(10);
        assert_eq!(r.get(), 10);
        // No ready address known: back to the configured number, not zero.
        r.set_live(0);
        assert_eq!(r.get(), 2);
        assert_eq!(Replicas::new(0).get(), 1);
    }

    #[test]
    fn service_names_are_namespaced() {
        assert_eq!(
            parse_service("medembed/medembed-gateway").unwrap(),
            ("medembed".to_string(), "medembed-gateway".to_string())
        );
        for bad in ["gateway", "/gateway", "ns/", "a/b/c"] {
            assert!(parse_service(bad).is_err(), "{bad}");
        }
    }
}
