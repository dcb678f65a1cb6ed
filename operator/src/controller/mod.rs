//! The three controllers and what they share: the client, the settings that
//! shape children, metrics, the event recorder, and per-object error
//! back-off.
//!
//! - [`deployment`] turns each `EmbeddingDeployment` into a worker
//!   Deployment, Service, PodDisruptionBudget, ConfigMap and (when
//!   autoscaling) an HPA, and reports the workers' state in its status;
//! - [`endpoint`] keeps each `EmbeddingEndpoint`'s key Secret (Key mode) and
//!   reports its scoring URL and its deployments' readiness and traffic;
//! - [`client`] checks each `EmbeddingClient`'s key Secret and endpoints and
//!   reports whether it can call them.
//!
//! Every write is a server-side apply under the one field manager
//! [`MANAGER`](crate::resources::MANAGER); children carry a controller owner
//! reference, so deleting the parent garbage-collects them.

pub mod client;
pub mod deployment;
pub mod endpoint;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use crate::config::OperatorConfig;
use crate::metrics::Metrics;
use crate::resources::WorkerDefaults;
use crate::Error;

/// What every reconcile needs.
pub struct Ctx {
    /// The API client (the operator's service account).
    pub client: Client,
    /// The operator's configuration.
    pub config: OperatorConfig,
    /// Settings shaping the workers.
    pub defaults: WorkerDefaults,
    /// Metrics.
    pub metrics: Metrics,
    /// The workers' NetworkPolicy settings (none: no policy).
    pub network_policy: Option<crate::resources::NetworkPolicySettings>,
    /// The workers' CA, as last read (worker TLS).
    pub worker_ca: crate::worker_tls::CaState,
    recorder: Recorder,
    failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("namespace", &self.config.namespace)
            .finish()
    }
}

impl Ctx {
    /// A context for `client` and `config`.
    pub fn new(client: Client, config: OperatorConfig, metrics: Metrics, identity: &str) -> Self {
        let defaults = WorkerDefaults {
            image: config.worker_image.clone(),
            fetch_image: config.fetch_image.clone(),
            listen_host: config.worker_listen_host.clone(),
            port: config.worker_port,
            tls: config.worker_tls,
        };
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "medembed-operator".into(),
                instance: Some(identity.to_string()),
            },
        );
        let network_policy = config.network_policy().unwrap_or_else(|e| {
            tracing::error!(error = %e, "no NetworkPolicy for the workers");
            None
        });
        Ctx {
            client,
            config,
            defaults,
            metrics,
            network_policy,
            worker_ca: Default::default(),
            recorder,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// An API for `K` over the watched scope (one namespace, or all).
    pub fn watched<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
        <K as Resource>::DynamicType: Default,
    {
        match &self.config.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    /// An API for `K` in namespace `ns`.
    pub fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Publishes an event about `obj` (failures to publish are logged only).
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "publishing an event failed");
        }
    }

    /// Records a successful reconcile of `key` (resets its back-off).
    pub fn succeeded(&self, controller: &str, key: &str, started: Instant) {
        self.metrics.observe(controller, started.elapsed(), None);
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Records a failed reconcile and returns when to retry: 1 s doubling per
    /// consecutive failure of the same object, at most 5 minutes.
    pub fn failed(&self, controller: &str, key: &str, error: &Error) -> Action {
        self.metrics
            .observe(controller, Duration::ZERO, Some(error.metric_label()));
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let delay = backoff(*n);
        tracing::warn!(controller, object = key, error = %error, retry_in_s = delay.as_secs_f64(), "reconcile failed");
        Action::requeue(delay)
    }
}

/// The retry delay after `n` consecutive failures.
pub fn backoff(n: u32) -> Duration {
    let secs = 1u64
        .checked_shl(n.saturating_sub(1).min(16))
        .unwrap_or(u64::MAX);
    Duration::from_secs(secs.min(300))
}

/// `namespace/name` of an object.
pub fn key_of<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or(""),
        obj.meta().name.as_deref().unwrap_or("")
    )
}

/// RFC 3339 now, for condition transition times.
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let secs: Vec<u64> = (1..=12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff(0).as_secs(), 1);
        assert_eq!(backoff(u32::MAX).as_secs(), 300);
    }
}
