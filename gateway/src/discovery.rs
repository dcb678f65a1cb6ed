//! Kubernetes discovery: builds the routing table from `EmbeddingEndpoint`,
//! `EmbeddingDeployment` and `EmbeddingClient` resources, the EndpointSlices
//! of the worker Services the operator creates, and the credentials Secret
//! the operator publishes (key hashes and JWKS key sets).
//!
//! One watch per kind (all namespaces, or the one given) feeds a single task
//! that keeps a projection of each object, only what routing needs, and
//! rebuilds the whole [`Table`] after every burst of changes (debounced by a
//! few milliseconds). Nothing is polled: a worker that turns ready appears in
//! the table as soon as its EndpointSlice says so, one that starts
//! terminating disappears the same way, and a rotated key works as soon as the
//! operator has published its hash (it watches the tenants' Secrets).
//!
//! What the cluster says, and how it is read:
//!
//! - an endpoint `NS/NAME` is served at `/endpoints/NS/NAME/score` (the
//!   operator's `status.scoringUri` default) and, by host name, at each of
//!   `spec.hosts` and at the gateway's `--host-template` expanded for it
//!   (wildcard DNS as the managed service's `NAME.REGION.inference...`);
//! - its deployments are the `EmbeddingDeployment`s of the namespace whose
//!   `spec.endpoint` names it; a deployment's workers are the ready, not
//!   terminating addresses (port `http`) of the EndpointSlices of its worker
//!   Service (`status.serviceName`, by default `NAME-worker`, labelled
//!   `medembed.io/deployment` by the operator; the EndpointSlice controller
//!   copies the Service's labels, which is what the watch selects on);
//! - Key mode: the endpoint's own Secret (`spec.auth.keySecretName`, else
//!   `status.keySecretName`, else `NAME-keys`) holds two keys in clear; the
//!   operator publishes their SHA-256 hashes. Callers with those keys are
//!   the client `NS/NAME:endpoint-key`, allowed on that endpoint only, with
//!   the endpoint's default quota;
//! - each `EmbeddingClient` `NS/C` may call the endpoints it names (same
//!   namespace) with the keys whose hashes the operator published from its
//!   Secret; Token mode reads the key set from `jwksUri`, or takes the one
//!   the operator published from the ConfigMap `jwksConfigMap`.
//!
//! Worker addresses come only from the EndpointSlice controller's own slices
//! of the worker Service (its `managed-by` label and a controlling owner
//! reference to that Service): a slice written by anyone else is ignored.
//!
//! The gateway reads no tenant Secret or ConfigMap: the one Secret it
//! watches (`--credentials-secret`, by name) holds the document of
//! [`medembed_api::crd::credentials`], hashes and public key sets only, so
//! the gateway holds no key in clear and a compromised gateway cannot read
//! the tenants' Secrets.
//!
//! RBAC the gateway needs: get/list/watch on `embeddingendpoints`,
//! `embeddingdeployments`, `embeddingclients` (`medembed.io`) and
//! `endpointslices` (`discovery.k8s.io`); get/list/watch of the credentials
//! Secret, by `resourceNames`.

use medembed_api::crd::scoped_api;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use medembed_api::crd::credentials::{decode_hash, Credentials, KeyHashes, CREDENTIALS_KEY};
use medembed_api::crd::{
    find_condition, EmbeddingClient, EmbeddingDeployment, EmbeddingEndpoint, EmbeddingEndpointSpec,
    Seniority, REASON_HOST_NOT_ALLOWED, REASON_SECRET_CONFLICT,
};
use medembed_api::workers::{worker_name, worker_server_name, DEPLOYMENT_LABEL, WORKER_PORT_NAME};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

use crate::balance::Registry;
use crate::table::{
    AuthMode, Client as TableClient, ClientToken, Deployment, Endpoint, JwksSource, KeySlot, Table,
    Tables, TokenSettings,
};

/// Label naming the Service an EndpointSlice belongs to.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming who manages an EndpointSlice.
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The EndpointSlice controller's name in [`MANAGED_BY_LABEL`].
const SLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// How long a burst of changes may last before the table is rebuilt.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// How long [`start`] waits for the first complete view of the cluster.
const INITIAL_SYNC: Duration = Duration::from_secs(60);

/// Where discovery looks and what it adds.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Namespace to watch (all when `None`).
    pub namespace: Option<String>,
    /// Kubeconfig file (else in-cluster configuration or `$KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// A host name per endpoint, with `{name}` and `{namespace}` replaced.
    pub host_template: Option<String>,
    /// The credentials Secret, `(namespace, name)`.
    pub credentials: Option<(String, String)>,
}

/// `(namespace, name)` of an object.
type Key = (String, String);

fn key_of<K: Resource>(o: &K) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// A worker Service's ready addresses, from one EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SliceView {
    service: String,
    workers: Vec<String>,
}

/// One change seen by a watch. Changes live only in the channel between
/// the watches and the builder, so their size does not matter.
#[allow(clippy::large_enum_variant)]
enum Change {
    Endpoint(Op<EmbeddingEndpoint>),
    Deployment(Op<EmbeddingDeployment>),
    Client(Op<EmbeddingClient>),
    Slice(Op<SliceView>),
    Credentials(Op<Credentials>),
}

/// A change to one kind's objects.
enum Op<T> {
    /// The watch (re)started: these objects replace all known ones.
    Reset(Vec<(Key, T)>),
    Put(Key, T),
    Delete(Key),
}

impl<T> Op<T> {
    fn apply(self, map: &mut HashMap<Key, T>) {
        match self {
            Op::Reset(all) => *map = all.into_iter().collect(),
            Op::Put(k, v) => {
                map.insert(k, v);
            }
            Op::Delete(k) => {
                map.remove(&k);
            }
        }
    }
}

/// Everything discovery knows of the cluster.
#[derive(Default)]
struct State {
    endpoints: HashMap<Key, EmbeddingEndpoint>,
    deployments: HashMap<Key, EmbeddingDeployment>,
    clients: HashMap<Key, EmbeddingClient>,
    slices: HashMap<Key, SliceView>,
    /// The credentials Secret's document (one entry at most).
    credentials: HashMap<Key, Credentials>,
}

impl State {
    fn apply(&mut self, c: Change) {
        match c {
            Change::Endpoint(op) => op.apply(&mut self.endpoints),
            Change::Deployment(op) => op.apply(&mut self.deployments),
            Change::Client(op) => op.apply(&mut self.clients),
            Change::Slice(op) => op.apply(&mut self.slices),
            Change::Credentials(op) => op.apply(&mut self.credentials),
        }
    }
}

/// Whether `s` is the EndpointSlice controller's slice of Service
/// `service`: managed by it and controlled by that Service. Anyone else's
/// slice (a writer of EndpointSlices copying the labels) could aim the
/// gateway, and patients' images, anywhere; its addresses are ignored.
fn trusted(s: &EndpointSlice, service: &str) -> bool {
    s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(SLICE_CONTROLLER)
        && s.owner_references().iter().any(|o| {
            o.api_version == "v1"
                && o.kind == "Service"
                && o.name == service
                && o.controller == Some(true)
        })
}

fn slice_view(s: &EndpointSlice) -> SliceView {
    let service = s
        .labels()
        .get(SERVICE_NAME_LABEL)
        .cloned()
        .unwrap_or_default();
    if !trusted(s, &service) {
        tracing::warn!(
            namespace = s.namespace().unwrap_or_default(),
            slice = s.name_any(),
            "ignoring an EndpointSlice not made by the EndpointSlice controller for its Service"
        );
        return SliceView {
            service,
            workers: Vec::new(),
        };
    }
    let ports = s.ports.as_deref().unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some(WORKER_PORT_NAME))
        .or_else(|| ports.first())
        .and_then(|p| p.port);
    let mut workers = Vec::new();
    if let Some(port) = port {
        for ep in s.endpoints.iter().flatten() {
            let c = ep.conditions.as_ref();
            // An unknown readiness counts as ready (the API's convention).
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            if !ready || terminating {
                continue;
            }
            if let Some(addr) = ep.addresses.first() {
                workers.push(if addr.contains(':') {
                    format!("[{addr}]:{port}")
                } else {
                    format!("{addr}:{port}")
                });
            }
        }
    }
    workers.sort();
    SliceView { service, workers }
}

/// The document of the credentials Secret; a Secret without a valid one
/// gives no credentials (every key refused) rather than stale ones.
fn credentials_view(s: &Secret) -> Credentials {
    let text = s.data.as_ref().and_then(|d| d.get(CREDENTIALS_KEY));
    match text.map(|t| serde_json::from_slice::<Credentials>(&t.0)) {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            tracing::error!(error = %e, "the credentials Secret holds no valid document; no key or key set is accepted until it does");
            Credentials::default()
        }
        None => {
            tracing::error!("the credentials Secret has no {CREDENTIALS_KEY}; no key or key set is accepted until it does");
            Credentials::default()
        }
    }
}

/// Runs one watch, sending each change through `tx` (projected by `view`).
fn spawn_watch<K, T>(
    api: Api<K>,
    config: watcher::Config,
    view: impl Fn(&K) -> T + Send + 'static,
    wrap: fn(Op<T>) -> Change,
    tx: mpsc::UnboundedSender<Change>,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    T: Send + 'static,
{
    let kind = std::any::type_name::<K>()
        .rsplit("::")
        .next()
        .unwrap_or("object");
    tokio::spawn(async move {
        let mut stream = watcher::watcher(api, config).default_backoff().boxed();
        let mut buffer: Option<Vec<(Key, T)>> = None;
        while let Some(event) = stream.next().await {
            let op = match event {
                Err(e) => {
                    tracing::warn!(kind, error = %e, "watch failed; retrying");
                    continue;
                }
                Ok(Event::Init) => {
                    buffer = Some(Vec::new());
                    continue;
                }
                Ok(Event::InitApply(o)) => {
                    buffer
                        .get_or_insert_with(Vec::new)
                        .push((key_of(&o), view(&o)));
                    continue;
                }
                Ok(Event::InitDone) => Op::Reset(buffer.take().unwrap_or_default()),
                Ok(Event::Apply(o)) => Op::Put(key_of(&o), view(&o)),
                Ok(Event::Delete(o)) => Op::Delete(key_of(&o)),
            };
            if tx.send(wrap(op)).is_err() {
                return;
            }
        }
    })
}

pub(crate) async fn kube_client(s: &Settings) -> anyhow::Result<Client> {
    let config = match &s.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes configuration (in-cluster or kubeconfig); without Kubernetes, pass --config-file")?,
    };
    Ok(Client::try_from(config)?)
}

/// Starts watching the cluster; returns once the first complete view is in
/// the table (or fails when it does not come within a minute).
pub async fn start(
    settings: Settings,
    tables: Arc<Tables>,
    registry: Arc<Registry>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let client = kube_client(&settings).await?;
    let ns = settings.namespace.as_deref();
    let (tx, mut rx) = mpsc::unbounded_channel::<Change>();
    let any = watcher::Config::default;
    let mut watches = vec![
        spawn_watch(
            scoped_api::<EmbeddingEndpoint>(&client, ns),
            any(),
            Clone::clone,
            Change::Endpoint,
            tx.clone(),
        ),
        spawn_watch(
            scoped_api::<EmbeddingDeployment>(&client, ns),
            any(),
            Clone::clone,
            Change::Deployment,
            tx.clone(),
        ),
        spawn_watch(
            scoped_api::<EmbeddingClient>(&client, ns),
            any(),
            Clone::clone,
            Change::Client,
            tx.clone(),
        ),
        spawn_watch(
            scoped_api::<EndpointSlice>(&client, ns),
            any().labels(DEPLOYMENT_LABEL),
            slice_view,
            Change::Slice,
            tx.clone(),
        ),
    ];
    let mut kinds = watches.len();
    match &settings.credentials {
        Some((cns, cname)) => {
            kinds += 1;
            watches.push(spawn_watch(
                Api::<Secret>::namespaced(client.clone(), cns),
                any().fields(&format!("metadata.name={cname}")),
                credentials_view,
                Change::Credentials,
                tx,
            ));
        }
        None => drop(tx),
    }
    let (ready_tx, mut ready_rx) = watch::channel(false);
    let host_template = settings.host_template.clone();
    let task = tokio::spawn(async move {
        let _watches = AbortOnDrop(watches);
        let mut state = State::default();
        let mut synced: HashSet<usize> = HashSet::new();
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            // Take the rest of the burst.
            tokio::time::sleep(DEBOUNCE).await;
            while let Ok(c) = rx.try_recv() {
                batch.push(c);
            }
            for c in batch {
                if let Some(i) = reset_index(&c) {
                    synced.insert(i);
                }
                state.apply(c);
            }
            if synced.len() < kinds {
                continue;
            }
            let table = build(&state, host_template.as_deref(), &registry);
            tracing::debug!(
                endpoints = table.endpoints.len(),
                clients = table.clients.len(),
                "routing table rebuilt from the cluster"
            );
            tables.set(table);
            let _ = ready_tx.send(true);
        }
    });
    let waited = tokio::time::timeout(INITIAL_SYNC, ready_rx.wait_for(|r| *r)).await;
    match waited {
        Ok(Ok(_)) => Ok(task),
        _ => {
            task.abort();
            anyhow::bail!(
                "no complete view of the cluster within {} s (are the CRDs installed, and may the gateway list them, EndpointSlices and its credentials Secret?)",
                INITIAL_SYNC.as_secs()
            )
        }
    }
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn reset_index(c: &Change) -> Option<usize> {
    match c {
        Change::Endpoint(Op::Reset(_)) => Some(0),
        Change::Deployment(Op::Reset(_)) => Some(1),
        Change::Client(Op::Reset(_)) => Some(2),
        Change::Slice(Op::Reset(_)) => Some(3),
        Change::Credentials(Op::Reset(_)) => Some(4),
        _ => None,
    }
}

/// The key slots of published hashes (an invalid hash is dropped).
fn slots(k: &KeyHashes) -> Vec<([u8; 32], KeySlot)> {
    [
        (&k.primary, KeySlot::Primary),
        (&k.secondary, KeySlot::Secondary),
    ]
    .into_iter()
    .filter_map(|(h, slot)| Some((decode_hash(h.as_deref()?)?, slot)))
    .collect()
}

impl State {
    /// The published credentials, if the Secret exists.
    fn credentials(&self) -> Option<&Credentials> {
        self.credentials.values().next()
    }
}

/// The id of an object: `namespace/name`.
fn id(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

fn expand(template: &str, ns: &str, name: &str) -> String {
    template.replace("{namespace}", ns).replace("{name}", name)
}

fn endpoint_token(
    ns: &str,
    name: &str,
    spec: &EmbeddingEndpointSpec,
    state: &State,
) -> Option<Arc<TokenSettings>> {
    let t = spec.auth.token.as_ref()?;
    let jwks = match (&t.jwks_uri, &t.jwks_config_map) {
        (Some(u), _) => JwksSource::Url(u.clone()),
        (None, Some(cm)) => {
            let set = state
                .credentials()
                .and_then(|c| c.endpoints.get(&id(ns, name)))
                .and_then(|e| e.jwks.clone());
            if set.is_none() {
                tracing::warn!(endpoint = %id(ns, name), config_map = %cm, "no key set published for the JWKS ConfigMap (missing, or no jwks.json); tokens cannot be verified");
            }
            JwksSource::Inline(set.unwrap_or_else(|| r#"{"keys":[]}"#.into()))
        }
        (None, None) => JwksSource::Inline(r#"{"keys":[]}"#.into()),
    };
    Some(Arc::new(TokenSettings {
        issuer: t.issuer.clone(),
        audiences: t.audiences.clone(),
        jwks,
        algorithms: t.algorithms.clone(),
    }))
}

/// Builds the table from what the watches saw.
fn build(state: &State, host_template: Option<&str>, registry: &Registry) -> Table {
    // Ready workers per (namespace, Service).
    let mut by_service: HashMap<(String, String), Vec<String>> = HashMap::new();
    for ((ns, _), s) in &state.slices {
        by_service
            .entry((ns.clone(), s.service.clone()))
            .or_default()
            .extend(s.workers.iter().cloned());
    }
    // Deployments per (namespace, endpoint).
    let mut deps_of: HashMap<(String, String), Vec<&EmbeddingDeployment>> = HashMap::new();
    for ((ns, _), d) in &state.deployments {
        deps_of
            .entry((ns.clone(), d.spec.endpoint.clone()))
            .or_default()
            .push(d);
    }
    let mut endpoints = Vec::new();
    let mut clients = Vec::new();
    let mut sorted: Vec<(&Key, &EmbeddingEndpoint)> = state.endpoints.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for ((ns, name), ep) in sorted {
        let spec = &ep.spec;
        let eid = id(ns, name);
        let seniority = Seniority::of(ep.meta());
        let mut deployments: BTreeMap<String, Arc<Deployment>> = BTreeMap::new();
        for d in deps_of
            .get(&(ns.clone(), name.clone()))
            .into_iter()
            .flatten()
        {
            let dname = d.name_any();
            let service = d
                .status
                .as_ref()
                .and_then(|s| s.service_name.clone())
                .unwrap_or_else(|| worker_name(&dname));
            // What the workers' certificates are issued for (worker TLS).
            let server_name = worker_server_name(&service, ns);
            let mut authorities = by_service
                .get(&(ns.clone(), service))
                .cloned()
                .unwrap_or_default();
            authorities.sort();
            authorities.dedup();
            let workers = authorities
                .iter()
                .map(|a| registry.worker_named(a, Some(&server_name)))
                .collect();
            deployments.insert(
                dname.clone(),
                Arc::new(Deployment {
                    name: dname,
                    workers,
                }),
            );
        }
        // Traffic may name a deployment not created yet: it has no workers.
        for d in spec.traffic.keys() {
            deployments.entry(d.clone()).or_insert_with(|| {
                Arc::new(Deployment {
                    name: d.clone(),
                    workers: Vec::new(),
                })
            });
        }
        let mirror = spec
            .mirror_traffic
            .as_ref()
            .filter(|m| m.percent > 0 && deployments.contains_key(&m.deployment))
            .map(|m| (m.deployment.clone(), m.percent.clamp(0, 50) as u32));
        let mut traffic: Vec<(String, u32)> = spec
            .traffic
            .iter()
            .filter(|(d, _)| mirror.as_ref().is_none_or(|(m, _)| m != *d))
            .filter(|(_, w)| **w > 0)
            .map(|(d, w)| (d.clone(), *w as u32))
            .collect();
        if traffic.is_empty() {
            // No split: the single ready deployment takes all traffic.
            let ready: Vec<&String> = deployments
                .iter()
                .filter(|(d, dep)| {
                    !dep.workers.is_empty() && mirror.as_ref().is_none_or(|(m, _)| m != *d)
                })
                .map(|(d, _)| d)
                .collect();
            if let [one] = ready.as_slice() {
                traffic.push(((*one).clone(), 100));
            }
        }
        // Host names outside the namespace's allow-list are not routed once
        // the operator has said so.
        let refused = ep.status.as_ref().is_some_and(|st| {
            find_condition(&st.conditions, "Ready")
                .is_some_and(|c| !c.is_true() && c.reason == REASON_HOST_NOT_ALLOWED)
        });
        let mut hosts = if refused {
            Vec::new()
        } else {
            spec.hosts.clone()
        };
        if let Some(t) = host_template {
            hosts.push(expand(t, ns, name));
        }
        let auth = spec.auth.mode;
        // A key Secret the operator refused (not the endpoint's own) gives
        // no keys.
        let secret_refused = ep.status.as_ref().is_some_and(|st| {
            find_condition(&st.conditions, "Ready")
                .is_some_and(|c| !c.is_true() && c.reason == REASON_SECRET_CONFLICT)
        });
        if auth == AuthMode::Key && !secret_refused {
            let published = state
                .credentials()
                .and_then(|c| c.endpoints.get(&eid))
                .map(|e| slots(&e.keys));
            if let Some(key_hashes) = published {
                if !key_hashes.is_empty() {
                    clients.push((
                        seniority.clone(),
                        TableClient {
                            id: format!("{eid}:endpoint-key"),
                            endpoints: HashSet::from([eid.clone()]),
                            key_hashes,
                            token: None,
                            quota: None,
                            dry_run: false,
                        },
                    ));
                }
            }
        }
        let rs = &spec.request_settings;
        endpoints.push((
            seniority,
            Endpoint {
                id: eid.clone(),
                hosts,
                path_prefix: format!("/endpoints/{ns}/{name}"),
                auth,
                token: endpoint_token(ns, name, spec, state),
                traffic,
                mirror,
                timeout: Duration::from_millis(u64::from(rs.request_timeout_ms.max(1))),
                max_body_bytes: rs.max_body_bytes,
                max_rows: rs.max_rows_per_request,
                default_quota: spec.default_client_quota.clone(),
                response_format: spec.response_format,
                deployments,
            },
        ));
    }
    let mut sorted: Vec<(&Key, &EmbeddingClient)> = state.clients.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for ((ns, name), c) in sorted {
        let spec = &c.spec;
        let mut key_hashes = Vec::new();
        if spec.keys.is_some() {
            match state
                .credentials()
                .and_then(|c| c.clients.get(&id(ns, name)))
            {
                Some(k) => key_hashes = slots(k),
                None => {
                    tracing::warn!(client = %id(ns, name), "no key hash published for the client (its key Secret is missing or invalid: see its status)")
                }
            }
        }
        clients.push((
            Seniority::of(c.meta()),
            TableClient {
                id: id(ns, name),
                endpoints: spec.endpoints.iter().map(|e| id(ns, e)).collect(),
                key_hashes,
                token: spec.token.as_ref().map(|t| ClientToken {
                    subject: t.subject.clone(),
                    claims: t.claims.clone(),
                }),
                quota: spec.quota.clone(),
                dry_run: spec.dry_run,
            },
        ));
    }
    Table::ranked(endpoints, clients).pruning(registry)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj<K: DeserializeOwned>(v: serde_json::Value) -> K {
        serde_json::from_value(v).unwrap()
    }

    /// The metadata the EndpointSlice controller gives its slice of Service
    /// `service`.
    fn controller_made(service: &str) -> serde_json::Value {
        json!({"name": format!("{service}-abc"), "namespace": "ns",
               "labels": {"kubernetes.io/service-name": service,
                          "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
               "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service,
                                    "uid": "u", "controller": true, "blockOwnerDeletion": true}]})
    }

    #[test]
    fn only_the_slice_controllers_slices_of_the_service_are_trusted() {
        let slice = |meta: serde_json::Value| -> EndpointSlice {
            obj(json!({"metadata": meta, "addressType": "IPv4",
                       "ports": [{"name": "http", "port": 8080}],
                       "endpoints": [{"addresses": ["10.6.6.6"]}]}))
        };
        assert_eq!(
            slice_view(&slice(controller_made("blue-worker")))
                .workers
                .len(),
            1
        );
        // Copied labels without the controller, another manager, another
        // Service as owner, an owner that does not control it: ignored.
        let mut forged = Vec::new();
        let mut m = controller_made("blue-worker");
        m["ownerReferences"] = json!([]);
        forged.push(m);
        let mut m = controller_made("blue-worker");
        m["labels"]["endpointslice.kubernetes.io/managed-by"] = json!("someone-else");
        forged.push(m);
        let mut m = controller_made("blue-worker");
        m["ownerReferences"][0]["name"] = json!("evil");
        forged.push(m);
        let mut m = controller_made("blue-worker");
        m["ownerReferences"][0]["controller"] = json!(false);
        forged.push(m);
        for meta in forged {
            let v = slice_view(&slice(meta.clone()));
            assert_eq!(v.service, "blue-worker");
            assert!(v.workers.is_empty(), "{meta}");
        }
    }

    #[test]
    fn slices_keep_ready_non_terminating_addresses_on_the_http_port() {
        let s: EndpointSlice = obj(json!({
            "metadata": controller_made("blue-worker"),
            "addressType": "IPv4",
            "ports": [{"name": "metrics", "port": 9000}, {"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["10.0.0.4"]},
            ],
        }));
        let v = slice_view(&s);
        assert_eq!(v.service, "blue-worker");
        assert_eq!(v.workers, vec!["10.0.0.1:8080", "10.0.0.4:8080"]);
    }

    /// Published hashes, as the operator writes them.
    fn published(state: &mut State, doc: serde_json::Value) {
        state.credentials.insert(
            ("gw".to_string(), "creds".to_string()),
            serde_json::from_value(doc).unwrap(),
        );
    }

    #[test]
    fn the_credentials_secret_is_read_and_a_broken_one_gives_nothing() {
        let h = crate::auth::hash_key("client-key");
        let doc = json!({"clients": {"ns/c": {"primary": h, "secondary": "not a hash"}}});
        let s: Secret = obj(json!({
            "metadata": {"name": "creds", "namespace": "gw"},
            "stringData": {},
            "data": {"credentials.json": base64(&doc.to_string())},
        }));
        let c = credentials_view(&s);
        assert_eq!(c.clients["ns/c"].primary.as_deref(), Some(h.as_str()));
        // The invalid secondary is dropped when the table is built.
        assert_eq!(slots(&c.clients["ns/c"]).len(), 1);
        let broken: Secret = obj(json!({"metadata": {"name": "creds"},
                                        "data": {"credentials.json": base64("{not json")}}));
        assert_eq!(credentials_view(&broken), Credentials::default());
        assert_eq!(
            credentials_view(&obj(json!({"metadata": {"name": "creds"}}))),
            Credentials::default()
        );
    }

    fn base64(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn table_from_resources() {
        let registry = Registry::default();
        let mut state = State::default();
        let k = |n: &str| ("ns".to_string(), n.to_string());
        state.endpoints.insert(
            k("chest"),
            obj(json!({
                "apiVersion": "medembed.io/v1alpha1", "kind": "EmbeddingEndpoint",
                "metadata": {"name": "chest", "namespace": "ns"},
                "spec": {"hosts": ["chest.example.org"], "traffic": {"blue": 90, "green": 10},
                         "mirrorTraffic": {"deployment": "shadow", "percent": 5},
                         "requestSettings": {"requestTimeoutMs": 7000},
                         "responseFormat": "Documented"},
            })),
        );
        for d in ["blue", "green", "shadow"] {
            state.deployments.insert(
                k(d),
                obj(json!({
                    "apiVersion": "medembed.io/v1alpha1", "kind": "EmbeddingDeployment",
                    "metadata": {"name": d, "namespace": "ns"},
                    "spec": {"endpoint": "chest", "model": {"pvc": {"claimName": "m"}}},
                })),
            );
        }
        state.slices.insert(
            k("blue-worker-x"),
            SliceView {
                service: "blue-worker".into(),
                workers: vec!["10.0.0.1:8080".into(), "10.0.0.2:8080".into()],
            },
        );
        published(
            &mut state,
            json!({"endpoints": {"ns/chest": {"keys": {"primary": hex::encode([1u8; 32])}}},
                   "clients": {"ns/radiology": {"primary": hex::encode([2u8; 32])}}}),
        );
        state.clients.insert(
            k("radiology"),
            obj(json!({
                "apiVersion": "medembed.io/v1alpha1", "kind": "EmbeddingClient",
                "metadata": {"name": "radiology", "namespace": "ns"},
                "spec": {"endpoints": ["chest"], "keys": {"secretName": "radiology-keys"},
                         "quota": {"requestsPerMinute": 60}},
            })),
        );
        let t = build(&state, Some("{name}.{namespace}.ml.example"), &registry);
        let e = &t.endpoints[0];
        assert_eq!(e.id, "ns/chest");
        assert_eq!(e.path_prefix, "/endpoints/ns/chest");
        assert_eq!(e.hosts, vec!["chest.example.org", "chest.ns.ml.example"]);
        assert_eq!(
            e.traffic,
            vec![("blue".to_string(), 90), ("green".to_string(), 10)]
        );
        assert_eq!(e.mirror, Some(("shadow".to_string(), 5)));
        assert_eq!(e.timeout, Duration::from_millis(7000));
        assert_eq!(e.response_format, medembed_api::ResponseFormat::Documented);
        assert_eq!(e.deployments["blue"].workers.len(), 2);
        assert!(e.deployments["green"].workers.is_empty());
        assert!(t.route(Some("chest.ns.ml.example:443"), "/score").is_some());
        assert!(t.route(None, "/endpoints/ns/chest/score").is_some());
        let (c, slot) = t.client_by_key(&[1u8; 32]).unwrap();
        assert_eq!(
            (c.id.as_str(), *slot),
            ("ns/chest:endpoint-key", KeySlot::Primary)
        );
        let (c, _) = t.client_by_key(&[2u8; 32]).unwrap();
        assert_eq!(c.id, "ns/radiology");
        assert!(c.endpoints.contains("ns/chest"));
        assert_eq!(c.quota.as_ref().unwrap().requests_per_minute, Some(60));
        assert_eq!(registry.all().len(), 2);
    }

    /// What the operator refused is not served: the host names of an
    /// endpoint outside its namespace's allow-list, the keys of a key Secret
    /// it does not own.
    #[test]
    fn refused_hosts_and_key_secrets_are_not_served() {
        let registry = Registry::default();
        let mut state = State::default();
        let k = |n: &str| ("ns".to_string(), n.to_string());
        let refused = |reason: &str| json!({"conditions": [{"type": "Ready", "status": "False", "reason": reason, "message": ""}]});
        state.endpoints.insert(
            k("squat"),
            obj(json!({
                "apiVersion": "medembed.io/v1alpha1", "kind": "EmbeddingEndpoint",
                "metadata": {"name": "squat", "namespace": "ns"},
                "spec": {"hosts": ["chest.example.org"], "auth": {"mode": "Unauthenticated"}},
                "status": refused("HostNotAllowed"),
            })),
        );
        state.endpoints.insert(
            k("planted"),
            obj(json!({
                "apiVersion": "medembed.io/v1alpha1", "kind": "EmbeddingEndpoint",
                "metadata": {"name": "planted", "namespace": "ns"},
                "spec": {"auth": {"mode": "Key"}},
                "status": refused("SecretConflict"),
            })),
        );
        published(
            &mut state,
            json!({"endpoints": {"ns/planted": {"keys": {"primary": hex::encode([3u8; 32])}}}}),
        );
        let t = build(&state, None, &registry);
        assert!(t.route(Some("chest.example.org"), "/score").is_none());
        assert!(t.route(None, "/endpoints/ns/squat/score").is_some());
        assert!(t.client_by_key(&[3u8; 32]).is_none());
    }
}
