//! The credentials publisher: keeps the one Secret the gateway reads its
//! keys and key sets from (see [`medembed_api::crd::credentials`] for the
//! document and why it exists).
//!
//! It watches `EmbeddingEndpoint`s and `EmbeddingClient`s, and the
//! *metadata* only of Opaque Secrets and of ConfigMaps: a Secret's or
//! ConfigMap's content is fetched (GET, by name) only when an endpoint or a
//! client refers to it and its `resourceVersion` changed, and is kept only as
//! its projection (SHA-256 hashes of key entries, the `jwks.json` text).
//! Unrelated Secrets never reach this process's memory.
//!
//! After each burst of changes (debounced) the document is rebuilt and, when
//! it differs from what was last written, applied (server-side apply) to the
//! target Secret; it is re-applied at every resync as well, and retried
//! every few seconds after a failure. A key rotated in a tenant's Secret is
//! therefore accepted by the gateway within about a second.
//!
//! An endpoint whose key Secret the operator refused (`SecretConflict`) gets
//! no keys here. A document over the Secret size limit is not written (the
//! gateway keeps the previous one) and the failure is logged and counted.
//!
//! Runs while the replica leads, next to the controllers; RBAC: list/watch
//! of Secrets and ConfigMaps (metadata), get of those named by endpoints and
//! clients, and get/patch of the target Secret only.

use medembed_api::crd::scoped_api;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::ByteString;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use medembed_api::crd::credentials::{
    hash_key, hex_sha256, Credentials, EndpointCredentials, KeyHashes, CREDENTIALS_KEY,
    CREDENTIALS_LABEL,
};
use medembed_api::crd::{
    find_condition, generated_key_secret_name, AuthMode, EmbeddingClient, EmbeddingEndpoint,
    ENDPOINT_KEY_ENTRIES, JWKS_CONFIG_MAP_KEY, REASON_SECRET_CONFLICT,
};
use serde::de::DeserializeOwned;

use crate::metrics::Metrics;
use crate::resources::MANAGER;
use crate::Error;

/// The controller label of this task's metrics.
const NAME: &str = "credentials";
/// How long a burst of changes may last before the document is rebuilt.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// How soon a failed rebuild or write is tried again.
const RETRY: Duration = Duration::from_secs(5);
/// The most bytes the document may take (a Secret holds at most 1 MiB,
/// metadata included).
pub const MAX_DOCUMENT_BYTES: usize = 1000 * 1024;

/// Where the document goes and what is watched.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The target Secret's namespace (the gateway's).
    pub namespace: String,
    /// The target Secret's name.
    pub name: String,
    /// Watch endpoints, clients and their Secrets in this namespace only
    /// (all namespaces when `None`).
    pub watch_namespace: Option<String>,
    /// Seconds between unconditional re-applies.
    pub resync: Duration,
}

/// Parses `NAMESPACE/NAME`.
pub fn parse_target(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("expected NAMESPACE/NAME, got {s:?}")),
    }
}

/// What is kept of a Secret: for each entry, the hash of its value as a key
/// in clear (endpoint Secrets) and its value as a hex hash if it is one
/// (client Secrets). Never the values.
#[derive(Default)]
struct SecretProjection {
    clear_hashed: HashMap<String, String>,
    hex: HashMap<String, String>,
}

impl SecretProjection {
    fn of(s: &Secret) -> Self {
        let mut p = SecretProjection::default();
        for (k, v) in s.data.iter().flatten() {
            p.clear_hashed.insert(k.clone(), hash_key(&v.0));
            if let Some(h) = hex_sha256(&v.0) {
                p.hex.insert(k.clone(), h);
            }
        }
        p
    }
}

/// Projections fetched so far, by `(namespace, name)`, with the
/// `resourceVersion` they were fetched at.
struct Cache<T> {
    entries: HashMap<(String, String), (String, T)>,
}

impl<T> Cache<T> {
    fn new() -> Self {
        Cache {
            entries: HashMap::new(),
        }
    }

    /// The projection of `ns/name` if the metadata store has it, fetching
    /// it again when its resourceVersion changed.
    async fn get<K>(
        &mut self,
        client: &Client,
        metas: &Store<PartialObjectMeta<K>>,
        ns: &str,
        name: &str,
        project: fn(&K) -> T,
        used: &mut Vec<(String, String)>,
    ) -> Result<Option<&T>, Error>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let key = (ns.to_string(), name.to_string());
        used.push(key.clone());
        let Some(meta) = metas.get(&ObjectRef::new(name).within(ns)) else {
            self.entries.remove(&key);
            return Ok(None);
        };
        let rv = meta.resource_version().unwrap_or_default();
        let fresh = self.entries.get(&key).is_some_and(|(v, _)| *v == rv);
        if !fresh {
            match Api::<K>::namespaced(client.clone(), ns)
                .get_opt(name)
                .await?
            {
                Some(obj) => {
                    let rv = obj.resource_version().unwrap_or_default();
                    self.entries.insert(key.clone(), (rv, project(&obj)));
                }
                None => {
                    self.entries.remove(&key);
                    return Ok(None);
                }
            }
        }
        Ok(self.entries.get(&key).map(|(_, t)| t))
    }

    /// Drops what no object refers to any more.
    fn retain(&mut self, used: &[(String, String)]) {
        self.entries.retain(|k, _| used.contains(k));
    }
}

fn jwks_of(c: &ConfigMap) -> Option<String> {
    c.data
        .as_ref()
        .and_then(|d| d.get(JWKS_CONFIG_MAP_KEY))
        .cloned()
}

/// The key Secret an endpoint in Key mode uses (the gateway's rule).
fn endpoint_key_secret(ep: &EmbeddingEndpoint) -> Option<String> {
    if ep.spec.auth.mode != AuthMode::Key {
        return None;
    }
    let refused = ep.status.as_ref().is_some_and(|st| {
        find_condition(&st.conditions, "Ready")
            .is_some_and(|c| !c.is_true() && c.reason == REASON_SECRET_CONFLICT)
    });
    if refused {
        return None;
    }
    Some(
        ep.spec
            .auth
            .key_secret_name
            .clone()
            .or_else(|| ep.status.as_ref().and_then(|s| s.key_secret_name.clone()))
            .unwrap_or_else(|| generated_key_secret_name(&ep.name_any())),
    )
}

/// Everything the publisher watches and has fetched.
struct Sources {
    client: Client,
    endpoints: Store<EmbeddingEndpoint>,
    clients: Store<EmbeddingClient>,
    secrets: Store<PartialObjectMeta<Secret>>,
    config_maps: Store<PartialObjectMeta<ConfigMap>>,
    secret_cache: Cache<SecretProjection>,
    jwks_cache: Cache<Option<String>>,
}

impl Sources {
    fn ready(&self) -> bool {
        self.endpoints.wait_until_ready().now_or_never().is_some()
            && self.clients.wait_until_ready().now_or_never().is_some()
            && self.secrets.wait_until_ready().now_or_never().is_some()
            && self.config_maps.wait_until_ready().now_or_never().is_some()
    }

    /// The projection of Secret `ns/name`, fetched if it changed.
    async fn secret(
        &mut self,
        ns: &str,
        name: &str,
        used: &mut Vec<(String, String)>,
    ) -> Result<Option<&SecretProjection>, Error> {
        self.secret_cache
            .get(
                &self.client,
                &self.secrets,
                ns,
                name,
                SecretProjection::of,
                used,
            )
            .await
    }

    /// Builds the document from the stores, fetching what changed.
    async fn build(&mut self) -> Result<Credentials, Error> {
        let mut doc = Credentials::default();
        let mut used_secrets = Vec::new();
        let mut used_maps = Vec::new();
        let mut endpoints = self.endpoints.state();
        endpoints.sort_by_key(|e| (e.namespace(), e.name_any()));
        for ep in endpoints {
            let ns = ep.namespace().unwrap_or_default();
            let mut creds = EndpointCredentials::default();
            if let Some(secret) = endpoint_key_secret(&ep) {
                if let Some(p) = self.secret(&ns, &secret, &mut used_secrets).await? {
                    let [primary, secondary] = ENDPOINT_KEY_ENTRIES.map(|e| p.clear_hashed.get(e));
                    creds.keys = KeyHashes {
                        primary: primary.cloned(),
                        secondary: secondary.cloned(),
                    };
                }
            }
            let token = ep.spec.auth.token.as_ref();
            if let Some(cm) = token
                .filter(|t| t.jwks_uri.is_none())
                .and_then(|t| t.jwks_config_map.as_ref())
            {
                creds.jwks = self
                    .jwks_cache
                    .get(
                        &self.client,
                        &self.config_maps,
                        &ns,
                        cm,
                        jwks_of,
                        &mut used_maps,
                    )
                    .await?
                    .cloned()
                    .flatten();
            }
            if creds != EndpointCredentials::default() {
                doc.endpoints
                    .insert(format!("{ns}/{}", ep.name_any()), creds);
            }
        }
        for c in self.clients.state() {
            let Some(keys) = &c.spec.keys else { continue };
            let ns = c.namespace().unwrap_or_default();
            let p = self
                .secret(&ns, &keys.secret_name, &mut used_secrets)
                .await?;
            let hashes = p.map(|p| KeyHashes {
                primary: p.hex.get(&keys.primary_key).cloned(),
                secondary: p.hex.get(&keys.secondary_key).cloned(),
            });
            if let Some(h) = hashes.filter(|h| !h.is_empty()) {
                doc.clients.insert(format!("{ns}/{}", c.name_any()), h);
            }
        }
        self.secret_cache.retain(&used_secrets);
        self.jwks_cache.retain(&used_maps);
        Ok(doc)
    }
}

/// The target Secret holding `doc`.
pub fn secret(settings: &Settings, doc: &Credentials) -> Result<Secret, Error> {
    let text = serde_json::to_vec(doc)?;
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(Error::InvalidObject(format!(
            "the credentials document takes {} bytes, over the {MAX_DOCUMENT_BYTES} a Secret can hold ({} endpoints, {} clients)",
            text.len(),
            doc.endpoints.len(),
            doc.clients.len()
        )));
    }
    let mut s = Secret::default();
    s.metadata.name = Some(settings.name.clone());
    s.metadata.namespace = Some(settings.namespace.clone());
    s.metadata.labels = Some(
        [
            (CREDENTIALS_LABEL.to_string(), MANAGER.to_string()),
            (
                "app.kubernetes.io/managed-by".to_string(),
                MANAGER.to_string(),
            ),
        ]
        .into(),
    );
    s.type_ = Some("Opaque".into());
    s.data = Some([(CREDENTIALS_KEY.to_string(), ByteString(text))].into());
    Ok(s)
}

/// Keeps the target Secret up to date until dropped.
pub async fn run(client: Client, settings: Settings, metrics: Metrics) {
    let ns = settings.watch_namespace.as_deref();
    let cfg = watcher::Config::default;
    let (endpoints, w_endpoints) = reflector::store();
    let (clients, w_clients) = reflector::store();
    let (secrets, w_secrets) = reflector::store();
    let (config_maps, w_config_maps) = reflector::store();
    let ticks = |r: Result<_, watcher::Error>| {
        if let Err(e) = r {
            tracing::warn!(error = %e, "credentials: a watch failed; retrying");
        }
        futures::future::ready(())
    };
    let mut changes = futures::stream::select_all([
        reflector::reflector(
            w_endpoints,
            watcher(scoped_api::<EmbeddingEndpoint>(&client, ns), cfg()).default_backoff(),
        )
        .then(|r| ticks(r.map(drop)))
        .boxed(),
        reflector::reflector(
            w_clients,
            watcher(scoped_api::<EmbeddingClient>(&client, ns), cfg()).default_backoff(),
        )
        .then(|r| ticks(r.map(drop)))
        .boxed(),
        reflector::reflector(
            w_secrets,
            watcher(
                scoped_api::<PartialObjectMeta<Secret>>(&client, ns),
                cfg().fields("type=Opaque"),
            )
            .default_backoff(),
        )
        .then(|r| ticks(r.map(drop)))
        .boxed(),
        reflector::reflector(
            w_config_maps,
            watcher(
                scoped_api::<PartialObjectMeta<ConfigMap>>(&client, ns),
                cfg(),
            )
            .default_backoff(),
        )
        .then(|r| ticks(r.map(drop)))
        .boxed(),
    ]);
    let mut sources = Sources {
        client: client.clone(),
        endpoints,
        clients,
        secrets,
        config_maps,
        secret_cache: Cache::new(),
        jwks_cache: Cache::new(),
    };
    let target: Api<Secret> = Api::namespaced(client, &settings.namespace);
    let mut written: Option<Credentials> = None;
    let mut next = settings.resync;
    loop {
        tokio::select! {
            c = changes.next() => if c.is_none() { return },
            _ = tokio::time::sleep(next) => written = None,
        }
        tokio::time::sleep(DEBOUNCE).await;
        while let Some(Some(())) = changes.next().now_or_never() {}
        if !sources.ready() {
            next = RETRY;
            continue;
        }
        let started = Instant::now();
        let result = async {
            let doc = sources.build().await?;
            if written.as_ref() != Some(&doc) {
                let s = secret(&settings, &doc)?;
                target
                    .patch(
                        &settings.name,
                        &PatchParams::apply(MANAGER).force(),
                        &Patch::Apply(&s),
                    )
                    .await?;
                tracing::info!(
                    secret = %format!("{}/{}", settings.namespace, settings.name),
                    endpoints = doc.endpoints.len(),
                    clients = doc.clients.len(),
                    "published the gateway's credentials"
                );
                written = Some(doc);
            }
            Ok::<_, Error>(())
        }
        .await;
        match result {
            Ok(()) => {
                metrics.observe(NAME, started.elapsed(), None);
                next = settings.resync;
            }
            Err(e) => {
                metrics.observe(NAME, started.elapsed(), Some(e.metric_label()));
                tracing::warn!(error = %e, retry_in_s = RETRY.as_secs(), "publishing the gateway's credentials failed");
                next = RETRY;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn targets_parse() {
        assert_eq!(
            parse_target("ns/name").unwrap(),
            ("ns".to_string(), "name".to_string())
        );
        for bad in ["", "ns", "/name", "ns/", "a/b/c"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn projections_keep_hashes_only() {
        let s: Secret = serde_json::from_value(json!({
            "metadata": {"name": "k"},
            "data": {"primaryKey": "c2VjcmV0", // "secret"
                     "hash": "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYQ=="}
        }))
        .unwrap();
        let p = SecretProjection::of(&s);
        assert_eq!(p.clear_hashed["primaryKey"], hash_key(b"secret"));
        assert_eq!(p.hex["hash"], "a".repeat(64));
        assert!(!p.hex.contains_key("primaryKey"));
    }

    #[test]
    fn a_refused_or_keyless_endpoint_names_no_secret() {
        let ep = |spec: serde_json::Value, status: serde_json::Value| -> EmbeddingEndpoint {
            serde_json::from_value(
                json!({"apiVersion": "medembed.io/v1alpha1", "kind": "EmbeddingEndpoint",
                "metadata": {"name": "ep", "namespace": "ns"}, "spec": spec, "status": status}),
            )
            .unwrap()
        };
        let key = json!({"auth": {"mode": "Key"}});
        assert_eq!(
            endpoint_key_secret(&ep(key.clone(), json!({}))).as_deref(),
            Some("ep-keys")
        );
        let own = json!({"auth": {"mode": "Key", "keySecretName": "mine"}});
        assert_eq!(
            endpoint_key_secret(&ep(own, json!({}))).as_deref(),
            Some("mine")
        );
        let refused = json!({"conditions": [{"type": "Ready", "status": "False", "reason": "SecretConflict",
                                             "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
        assert_eq!(endpoint_key_secret(&ep(key, refused)), None);
        let open = json!({"auth": {"mode": "Unauthenticated"}});
        assert_eq!(endpoint_key_secret(&ep(open, json!({}))), None);
    }

    #[test]
    fn an_oversized_document_is_refused() {
        let settings = Settings {
            namespace: "gw".into(),
            name: "creds".into(),
            watch_namespace: None,
            resync: Duration::from_secs(300),
        };
        let mut doc = Credentials::default();
        let s = secret(&settings, &doc).unwrap();
        assert_eq!(s.metadata.labels.unwrap()[CREDENTIALS_LABEL], MANAGER);
        for i in 0..20_000 {
            doc.clients.insert(
                format!("tenant-{i}/client-{i}"),
                KeyHashes::of_clear_keys(Some(b"a"), Some(b"b")),
            );
        }
        let e = secret(&settings, &doc).unwrap_err().to_string();
        assert!(e.contains("20000 clients"), "{e}");
    }
}
