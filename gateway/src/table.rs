//! The routing table: every endpoint with its deployments and workers, every
//! client with its credentials and quota, and the indexes a request needs
//! (host name, path prefix, key hash).
//!
//! Both sources of configuration, the static file ([`crate::file`]) and
//! Kubernetes ([`crate::discovery`]), build this same model. A table is
//! immutable: a change builds a new one and swaps it in whole ([`Tables`]),
//! so a request sees one consistent view from start to end. Per-worker state
//! (in-flight counts, penalties, reported queue depth) lives in
//! [`crate::balance::Registry`] and survives the swap.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use medembed_api::ResponseFormat;

use crate::balance::Worker;

/// A client's limits and an endpoint's auth mode are the custom resources'
/// own types, in both configuration modes.
pub use medembed_api::crd::{AuthMode, ClientQuota, Seniority};

/// Where the signing keys of a token issuer come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum JwksSource {
    /// Fetched over HTTP from the issuer's JWKS URL, refreshed periodically.
    Url(String),
    /// A mounted file (air-gapped clusters), re-read when it changes.
    File(PathBuf),
    /// The key set itself (e.g. read from a ConfigMap by discovery).
    Inline(String),
}

/// How an endpoint in Token mode verifies JWTs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSettings {
    /// Expected `iss`.
    pub issuer: String,
    /// Accepted `aud` values.
    pub audiences: Vec<String>,
    /// The issuer's signing keys.
    pub jwks: JwksSource,
    /// Accepted algorithms (`RS256`, `ES256`, ...).
    pub algorithms: Vec<String>,
}

/// One deployment of an endpoint: a set of interchangeable workers.
#[derive(Debug)]
pub struct Deployment {
    /// The deployment's name (what the pin header names).
    pub name: String,
    /// Its ready workers.
    pub workers: Vec<Arc<Worker>>,
}

/// An endpoint: what clients call.
#[derive(Debug)]
pub struct Endpoint {
    /// Unique name: `name` in file mode, `namespace/name` in Kubernetes mode;
    /// used in metric labels and audit lines.
    pub id: String,
    /// Host names (without port) that select this endpoint.
    pub hosts: Vec<String>,
    /// Path prefix that selects this endpoint (`PREFIX/score`), without a
    /// trailing slash.
    pub path_prefix: String,
    /// Authentication mode.
    pub auth: AuthMode,
    /// Token verification in Token mode.
    pub token: Option<Arc<TokenSettings>>,
    /// Live traffic weights per deployment name (zero weights omitted).
    pub traffic: Vec<(String, u32)>,
    /// Mirrored traffic: deployment name and percent of live requests.
    pub mirror: Option<(String, u32)>,
    /// Time budget of a request.
    pub timeout: Duration,
    /// Largest request body.
    pub max_body_bytes: u64,
    /// Most rows per request.
    pub max_rows: u32,
    /// Quota of clients that declare none.
    pub default_quota: Option<ClientQuota>,
    /// The JSON shape of successful answers, passed to the workers.
    pub response_format: ResponseFormat,
    /// Deployments by name.
    pub deployments: BTreeMap<String, Arc<Deployment>>,
}

/// A client's token identity: `sub` and further string claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientToken {
    /// Expected `sub`.
    pub subject: String,
    /// Further claims the token must carry with these values.
    pub claims: BTreeMap<String, String>,
}

/// Which of a client's two keys matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySlot {
    /// The primary key.
    Primary,
    /// The secondary key.
    Secondary,
}

impl KeySlot {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            KeySlot::Primary => "primary",
            KeySlot::Secondary => "secondary",
        }
    }
}

/// A client (tenant).
pub struct Client {
    /// Unique name (`namespace/name` in Kubernetes mode); metric label.
    pub id: String,
    /// Endpoint ids it may call.
    pub endpoints: HashSet<String>,
    /// SHA-256 of its primary and secondary keys.
    pub key_hashes: Vec<([u8; 32], KeySlot)>,
    /// Its token identity.
    pub token: Option<ClientToken>,
    /// Its own quota (else the endpoint's default).
    pub quota: Option<ClientQuota>,
    /// Count quota violations without rejecting.
    pub dry_run: bool,
}

impl std::fmt::Debug for Client {
    // Key hashes are not secrets, but nothing key-derived goes to logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("endpoints", &self.endpoints)
            .field("keys", &self.key_hashes.len())
            .field("token", &self.token)
            .field("quota", &self.quota)
            .field("dry_run", &self.dry_run)
            .finish()
    }
}

/// An immutable snapshot of everything routable.
#[derive(Debug, Default)]
pub struct Table {
    /// All endpoints.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// All clients.
    pub clients: Vec<Arc<Client>>,
    by_host: HashMap<String, Arc<Endpoint>>,
    by_prefix: Vec<(String, Arc<Endpoint>)>,
    by_key: HashMap<[u8; 32], (Arc<Client>, KeySlot)>,
}

/// Lower-cases a host name and strips a port.
pub fn normalize_host(host: &str) -> String {
    let h = host.trim();
    let h = if let Some(rest) = h.strip_prefix('[') {
        // IPv6 literal: keep the brackets' content.
        rest.split(']').next().unwrap_or(rest)
    } else {
        h.rsplit_once(':')
            .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
            .map_or(h, |(h, _)| h)
    };
    h.to_ascii_lowercase()
}

impl Table {
    /// Forgets, in `registry`, the workers no deployment of this table has
    /// (their per-worker state goes with them); returns the table.
    pub fn pruning(self, registry: &crate::balance::Registry) -> Self {
        let keep: HashSet<String> = self
            .endpoints
            .iter()
            .flat_map(|e| e.deployments.values())
            .flat_map(|d| d.workers.iter().map(|w| w.authority.clone()))
            .collect();
        registry.retain(&keep);
        self
    }

    /// Builds the indexes from endpoints and clients in order of precedence:
    /// a host or key claimed twice keeps its first owner (the static file's
    /// order).
    pub fn new(endpoints: Vec<Endpoint>, clients: Vec<Client>) -> Self {
        let rank = |i: usize, id: &str| Seniority {
            created: i as i64,
            id: id.to_string(),
        };
        let endpoints = endpoints
            .into_iter()
            .enumerate()
            .map(|(i, e)| (rank(i, &e.id), e))
            .collect();
        let clients = clients
            .into_iter()
            .enumerate()
            .map(|(i, c)| (rank(i, &c.id), c))
            .collect();
        Self::ranked(endpoints, clients)
    }

    /// Builds the indexes. A host name claimed by several endpoints, or a key
    /// hash held by several clients, belongs to the one with the smallest
    /// [`Seniority`] (the oldest), whatever the order given: a newer endpoint
    /// or client never takes a host or a key away from an older one. The
    /// others keep their path prefix and their other hosts and keys.
    pub fn ranked(
        endpoints: Vec<(Seniority, Endpoint)>,
        clients: Vec<(Seniority, Client)>,
    ) -> Self {
        let mut endpoints = endpoints;
        endpoints.sort_by(|a, b| a.0.cmp(&b.0));
        let mut clients = clients;
        clients.sort_by(|a, b| a.0.cmp(&b.0));
        let endpoints: Vec<Arc<Endpoint>> =
            endpoints.into_iter().map(|(_, e)| Arc::new(e)).collect();
        let clients: Vec<Arc<Client>> = clients.into_iter().map(|(_, c)| Arc::new(c)).collect();
        let mut by_host: HashMap<String, Arc<Endpoint>> = HashMap::new();
        let mut by_prefix = Vec::new();
        for e in &endpoints {
            for h in &e.hosts {
                let owner = by_host
                    .entry(normalize_host(h))
                    .or_insert_with(|| e.clone());
                if !Arc::ptr_eq(owner, e) {
                    tracing::debug!(host = %h, owner = %owner.id, endpoint = %e.id, "host name claimed by an older endpoint; not routed to this one");
                }
            }
            by_prefix.push((e.path_prefix.clone(), e.clone()));
        }
        // Longest prefix first.
        by_prefix.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        let mut by_key: HashMap<[u8; 32], (Arc<Client>, KeySlot)> = HashMap::new();
        for c in &clients {
            for (hash, slot) in &c.key_hashes {
                let owner = by_key.entry(*hash).or_insert_with(|| (c.clone(), *slot));
                if !Arc::ptr_eq(&owner.0, c) {
                    tracing::debug!(owner = %owner.0.id, client = %c.id, "key held by an older client; not accepted for this one");
                }
            }
        }
        Table {
            endpoints,
            clients,
            by_host,
            by_prefix,
            by_key,
        }
    }

    /// The endpoint a request addresses: by host name when the path is
    /// `/score`, else by path prefix (`PREFIX/score`).
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Arc<Endpoint>> {
        if path == "/score" {
            if let Some(e) = host.and_then(|h| self.by_host.get(&normalize_host(h))) {
                return Some(e);
            }
        }
        let prefix = path.strip_suffix("/score")?;
        self.by_prefix
            .iter()
            .find(|(p, _)| p == prefix)
            .map(|(_, e)| e)
    }

    /// The client owning a key hash (found by hash; the caller confirms with a
    /// constant-time comparison).
    pub fn client_by_key(&self, hash: &[u8; 32]) -> Option<&(Arc<Client>, KeySlot)> {
        self.by_key.get(hash)
    }
}

/// The current table, swapped whole on every change.
#[derive(Debug, Default)]
pub struct Tables {
    current: RwLock<Arc<Table>>,
}

impl Tables {
    /// The current table.
    pub fn get(&self) -> Arc<Table> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the table.
    pub fn set(&self, t: Table) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(t);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("Chest.Example:8443"), "chest.example");
        assert_eq!(normalize_host("chest.example"), "chest.example");
        assert_eq!(normalize_host("[::1]:80"), "::1");
    }

    fn endpoint(id: &str, hosts: &[&str]) -> Endpoint {
        Endpoint {
            id: id.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path_prefix: format!("/endpoints/{id}"),
            auth: AuthMode::Key,
            token: None,
            traffic: Vec::new(),
            mirror: None,
            timeout: Duration::from_secs(1),
            max_body_bytes: 1,
            max_rows: 1,
            default_quota: None,
            response_format: ResponseFormat::default(),
            deployments: BTreeMap::new(),
        }
    }

    fn client(id: &str, hash: u8) -> Client {
        Client {
            id: id.into(),
            endpoints: HashSet::new(),
            key_hashes: vec![([hash; 32], KeySlot::Primary)],
            token: None,
            quota: None,
            dry_run: false,
        }
    }

    fn age(created: i64, id: &str) -> Seniority {
        Seniority {
            created,
            id: id.into(),
        }
    }

    /// The attack: a tenant in a namespace sorting first ("aaa") claims the
    /// host of an older endpoint in "radiology" to receive its images.
    #[test]
    fn a_host_claimed_twice_goes_to_the_older_endpoint_whatever_the_namespace() {
        for flip in [false, true] {
            let mut eps = vec![
                (
                    age(100, "radiology/chest"),
                    endpoint("radiology/chest", &["chest.example.org"]),
                ),
                (
                    age(200, "aaa/thief"),
                    endpoint("aaa/thief", &["Chest.example.org", "own.example.org"]),
                ),
            ];
            if flip {
                eps.reverse();
            }
            let t = Table::ranked(eps, Vec::new());
            assert_eq!(
                t.route(Some("chest.example.org"), "/score").unwrap().id,
                "radiology/chest"
            );
            // The newer one keeps what nobody else claims.
            assert_eq!(
                t.route(Some("own.example.org"), "/score").unwrap().id,
                "aaa/thief"
            );
            assert_eq!(
                t.route(None, "/endpoints/aaa/thief/score").unwrap().id,
                "aaa/thief"
            );
        }
        // Same age: namespace/name decides, the same way every time.
        let t = Table::ranked(
            vec![
                (age(5, "b/x"), endpoint("b/x", &["h.example"])),
                (age(5, "a/y"), endpoint("a/y", &["h.example"])),
            ],
            Vec::new(),
        );
        assert_eq!(t.route(Some("h.example"), "/score").unwrap().id, "a/y");
    }

    /// The attack: a newer client copies an older client's key hash.
    #[test]
    fn a_key_held_twice_stays_with_the_older_client() {
        for flip in [false, true] {
            let mut clients = vec![
                (age(100, "radiology/reader"), client("radiology/reader", 7)),
                (age(200, "aaa/copy"), client("aaa/copy", 7)),
            ];
            if flip {
                clients.reverse();
            }
            let t = Table::ranked(Vec::new(), clients);
            assert_eq!(t.client_by_key(&[7; 32]).unwrap().0.id, "radiology/reader");
        }
    }
}
