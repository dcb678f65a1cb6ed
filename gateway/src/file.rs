//! Static configuration file mode: the gateway in front of workers on one
//! machine (or any fixed set of addresses), without Kubernetes.
//!
//! The file uses the custom resources' field names, so moving a setup to a
//! cluster is a matter of splitting it into resources:
//!
//! ```yaml
//! endpoints:
//!   - name: chest
//!     hosts: [chest.example.org]        # host-name routing (POST /score)
//!     pathPrefix: /endpoints/chest      # path routing (POST /endpoints/chest/score); this is the default
//!     auth: {mode: Key}                 # Key | Token | Unauthenticated
//!     #  token: {issuer: https://idp, audiences: [medembed], jwksUri: http://idp/jwks}  (or jwksFile: /path)
//!     traffic: {blue: 90, green: 10}
//!     mirrorTraffic: {deployment: shadow, percent: 10}
//!     requestSettings: {requestTimeoutMs: 5000, maxBodyBytes: 33554432, maxRowsPerRequest: 1024}
//!     defaultClientQuota: {requestsPerMinute: 600}
//!     responseFormat: PerRow            # PerRow (as the managed endpoint answers) | Documented
//!     deployments:
//!       blue: {workers: ["127.0.0.1:8081", "127.0.0.1:8082"]}
//!       green: {workers: ["127.0.0.1:8083"], tlsServerName: green.workers.local}  # with --worker-ca-file
//!       shadow: {workers: ["127.0.0.1:8084"]}
//! clients:
//!   - name: radiology
//!     endpoints: [chest]
//!     keys: {primarySha256: "<hex>", secondarySha256: "<hex>"}
//!     token: {subject: "svc-radiology", claims: {}}
//!     quota: {requestsPerMinute: 600, imagesPerMinute: 6000, concurrentRequests: 8}
//!     dryRun: false
//! ```
//!
//! Only SHA-256 hashes of keys are written (`printf %s "$KEY" | sha256sum`).
//! The file is re-read when it changes, so keys rotate and workers come and
//! go without a restart; a file that does not parse is logged and ignored,
//! and the last good table stays in force.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use medembed_api::crd::{MirrorTraffic, RequestSettings};
use medembed_api::ResponseFormat;
use serde::Deserialize;

use crate::balance::Registry;
use crate::table::{
    AuthMode, Client, ClientQuota, ClientToken, Deployment, Endpoint, JwksSource, KeySlot, Table,
    Tables, TokenSettings,
};

/// The file's root.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileConfig {
    /// Endpoints.
    #[serde(default)]
    pub endpoints: Vec<FileEndpoint>,
    /// Clients.
    #[serde(default)]
    pub clients: Vec<FileClient>,
}

/// An endpoint in the file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileEndpoint {
    /// Unique name.
    pub name: String,
    /// Host names routed to it.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Path prefix (default `/endpoints/<name>`).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Authentication.
    #[serde(default)]
    pub auth: FileAuth,
    /// Live traffic weights.
    #[serde(default)]
    pub traffic: BTreeMap<String, u32>,
    /// Mirrored traffic.
    #[serde(default)]
    pub mirror_traffic: Option<MirrorTraffic>,
    /// Request limits, with the custom resource's defaults.
    #[serde(default)]
    pub request_settings: RequestSettings,
    /// Quota of clients without their own.
    #[serde(default)]
    pub default_client_quota: Option<ClientQuota>,
    /// The JSON shape of successful answers: `PerRow` (default, as the
    /// managed endpoint answers) or `Documented` (as its documentation shows).
    #[serde(default)]
    pub response_format: ResponseFormat,
    /// Deployments and their workers.
    #[serde(default)]
    pub deployments: BTreeMap<String, FileDeployment>,
}

/// Authentication of an endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileAuth {
    /// Mode.
    #[serde(default)]
    pub mode: AuthMode,
    /// Token settings (Token mode).
    #[serde(default)]
    pub token: Option<FileToken>,
}

/// Token verification settings.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileToken {
    /// Expected issuer.
    pub issuer: String,
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// JWKS URL.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// JWKS file.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Accepted algorithms.
    #[serde(default)]
    pub algorithms: Vec<String>,
}

/// A deployment's workers.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileDeployment {
    /// `host:port` of each worker.
    pub workers: Vec<String>,
    /// The name the workers' TLS certificates carry, verified when the
    /// gateway dials workers over TLS (`--worker-ca-file`); without it, the
    /// worker's IP address is.
    #[serde(default)]
    pub tls_server_name: Option<String>,
}

/// A client.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileClient {
    /// Unique name.
    pub name: String,
    /// Endpoints it may call.
    pub endpoints: Vec<String>,
    /// Hashes of its keys.
    #[serde(default)]
    pub keys: Option<FileKeys>,
    /// Token identity.
    #[serde(default)]
    pub token: Option<FileClientToken>,
    /// Quota.
    #[serde(default)]
    pub quota: Option<ClientQuota>,
    /// Count, do not enforce, quota violations.
    #[serde(default)]
    pub dry_run: bool,
}

/// Hex SHA-256 hashes of a client's keys.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileKeys {
    /// Primary key's hash.
    pub primary_sha256: String,
    /// Secondary key's hash.
    #[serde(default)]
    pub secondary_sha256: Option<String>,
}

/// Token identity of a client.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileClientToken {
    /// Expected `sub`.
    pub subject: String,
    /// Further claims.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

/// Parses a hex SHA-256.
pub fn parse_hash(s: &str) -> anyhow::Result<[u8; 32]> {
    let v = hex::decode(s.trim()).map_err(|_| anyhow::anyhow!("a key hash is not hex"))?;
    v.try_into()
        .map_err(|_| anyhow::anyhow!("a key hash is not 32 bytes (SHA-256)"))
}

/// Checks an endpoint's traffic and mirror settings against its deployments.
pub fn check_traffic(
    name: &str,
    traffic: &BTreeMap<String, u32>,
    mirror: Option<(&str, u32)>,
    deployments: &BTreeMap<String, Arc<Deployment>>,
) -> anyhow::Result<()> {
    for d in traffic.keys() {
        anyhow::ensure!(
            deployments.contains_key(d),
            "endpoint {name}: traffic names unknown deployment {d}"
        );
    }
    let sum: u32 = traffic.values().sum();
    anyhow::ensure!(
        traffic.is_empty() || sum == 100,
        "endpoint {name}: traffic weights sum to {sum}, not 100"
    );
    if let Some((d, pct)) = mirror {
        anyhow::ensure!(
            deployments.contains_key(d),
            "endpoint {name}: mirror names unknown deployment {d}"
        );
        anyhow::ensure!(pct <= 50, "endpoint {name}: mirror percent above 50");
        anyhow::ensure!(
            traffic.get(d).copied().unwrap_or(0) == 0,
            "endpoint {name}: the mirror deployment takes live traffic"
        );
    }
    Ok(())
}

/// Builds a table from the file's content.
pub fn build(cfg: FileConfig, registry: &Registry) -> anyhow::Result<Table> {
    let mut endpoints = Vec::new();
    let mut names = HashSet::new();
    for e in cfg.endpoints {
        anyhow::ensure!(
            names.insert(e.name.clone()),
            "endpoint {} declared twice",
            e.name
        );
        let deployments: BTreeMap<String, Arc<Deployment>> = e
            .deployments
            .into_iter()
            .map(|(name, d)| {
                let name_of = d.tls_server_name.as_deref();
                let workers = d
                    .workers
                    .iter()
                    .map(|w| registry.worker_named(w, name_of))
                    .collect();
                (name.clone(), Arc::new(Deployment { name, workers }))
            })
            .collect();
        let mirror = match e.mirror_traffic {
            Some(m) => Some((
                m.deployment,
                u32::try_from(m.percent)
                    .map_err(|_| anyhow::anyhow!("endpoint {}: mirror percent below 0", e.name))?,
            )),
            None => None,
        };
        check_traffic(
            &e.name,
            &e.traffic,
            mirror.as_ref().map(|(d, p)| (d.as_str(), *p)),
            &deployments,
        )?;
        let token = match (e.auth.mode, e.auth.token) {
            (AuthMode::Token, None) => {
                anyhow::bail!("endpoint {}: Token mode needs auth.token", e.name)
            }
            (_, Some(t)) => {
                let jwks = match (t.jwks_uri, t.jwks_file) {
                    (Some(u), None) => JwksSource::Url(u),
                    (None, Some(f)) => JwksSource::File(f),
                    _ => anyhow::bail!(
                        "endpoint {}: set exactly one of jwksUri and jwksFile",
                        e.name
                    ),
                };
                Some(Arc::new(TokenSettings {
                    issuer: t.issuer,
                    audiences: t.audiences,
                    jwks,
                    algorithms: t.algorithms,
                }))
            }
            (_, None) => None,
        };
        let prefix = e
            .path_prefix
            .unwrap_or_else(|| format!("/endpoints/{}", e.name));
        let path_prefix = format!("/{}", prefix.trim_matches('/'));
        endpoints.push(Endpoint {
            id: e.name,
            hosts: e.hosts,
            path_prefix,
            auth: e.auth.mode,
            token,
            traffic: e.traffic.into_iter().filter(|(_, w)| *w > 0).collect(),
            mirror,
            timeout: Duration::from_millis(u64::from(e.request_settings.request_timeout_ms.max(1))),
            max_body_bytes: e.request_settings.max_body_bytes,
            max_rows: e.request_settings.max_rows_per_request,
            default_quota: e.default_client_quota,
            response_format: e.response_format,
            deployments,
        });
    }
    let mut clients = Vec::new();
    for c in cfg.clients {
        let mut key_hashes = Vec::new();
        if let Some(k) = &c.keys {
            key_hashes.push((parse_hash(&k.primary_sha256)?, KeySlot::Primary));
            if let Some(s) = &k.secondary_sha256 {
                key_hashes.push((parse_hash(s)?, KeySlot::Secondary));
            }
        }
        clients.push(Client {
            id: c.name,
            endpoints: c.endpoints.into_iter().collect(),
            key_hashes,
            token: c.token.map(|t| ClientToken {
                subject: t.subject,
                claims: t.claims,
            }),
            quota: c.quota,
            dry_run: c.dry_run,
        });
    }
    Ok(Table::new(endpoints, clients).pruning(registry))
}

/// Parses the file's text. A field the gateway does not know (a typo, or a
/// setting of another version) is an error naming its path, so it never
/// silently goes unenforced.
pub fn parse(text: &str) -> anyhow::Result<FileConfig> {
    let mut unknown = Vec::new();
    let cfg: FileConfig =
        serde_ignored::deserialize(serde_yaml::Deserializer::from_str(text), |path| {
            // `?` marks an optional value's content: leave it out of the path.
            unknown.push(path.to_string().replace(".?", ""))
        })?;
    anyhow::ensure!(
        unknown.is_empty(),
        "unknown field(s): {}",
        unknown.join(", ")
    );
    Ok(cfg)
}

/// Reads and builds the file.
pub fn load(path: &Path, registry: &Registry) -> anyhow::Result<Table> {
    let text = std::fs::read_to_string(path)?;
    build(parse(&text)?, registry)
}

fn mtime(p: &Path) -> Option<(SystemTime, u64)> {
    std::fs::metadata(p)
        .ok()
        .and_then(|m| m.modified().ok().map(|t| (t, m.len())))
}

/// Loads the file now, then re-loads it whenever it changes.
pub fn watch(
    path: PathBuf,
    every: Duration,
    tables: Arc<Tables>,
    registry: Arc<Registry>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut seen = mtime(&path);
    tables.set(load(&path, &registry)?);
    Ok(tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let now = mtime(&path);
            if now == seen {
                continue;
            }
            seen = now;
            match load(&path, &registry) {
                Ok(t) => {
                    tracing::info!(
                        endpoints = t.endpoints.len(),
                        clients = t.clients.len(),
                        "configuration reloaded"
                    );
                    tables.set(t);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "configuration file changed but is invalid; keeping the previous one")
                }
            }
        }
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const BASE: &str = r#"
endpoints:
  - name: chest
    deployments: {blue: {workers: ["127.0.0.1:9"]}}
clients:
  - name: radiology
    endpoints: [chest]
    keys: {primarySha256: "0000000000000000000000000000000000000000000000000000000000000000"}
"#;

    #[test]
    fn defaults_are_the_custom_resources() {
        let t = build(parse(BASE).unwrap(), &Registry::default()).unwrap();
        let e = &t.endpoints[0];
        let crd = RequestSettings::default();
        assert_eq!(
            e.timeout,
            Duration::from_millis(u64::from(crd.request_timeout_ms))
        );
        assert_eq!(e.max_body_bytes, crd.max_body_bytes);
        assert_eq!(e.max_rows, crd.max_rows_per_request);
        assert_eq!(e.auth, AuthMode::Key);
        assert_eq!(e.response_format, ResponseFormat::PerRow);
    }

    #[test]
    fn an_unknown_field_is_an_error_naming_its_path() {
        for (typo, path) in [
            (
                BASE.replace(
                    "    deployments:",
                    "    requestSettings: {requestTimeoutMS: 10}\n    deployments:",
                ),
                "endpoints.0.requestSettings.requestTimeoutMS",
            ),
            (
                BASE.replace("    keys:", "    quota: {requestPerMinute: 5}\n    keys:"),
                "clients.0.quota.requestPerMinute",
            ),
            (format!("{BASE}extra: 1\n"), "extra"),
        ] {
            let e = parse(&typo).unwrap_err().to_string();
            assert!(e.contains(path), "{e}");
        }
    }

    #[test]
    fn a_negative_mirror_share_is_refused() {
        let text = BASE.replace(
            "    deployments:",
            "    mirrorTraffic: {deployment: blue, percent: -5}\n    deployments:",
        );
        let e = build(parse(&text).unwrap(), &Registry::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("mirror percent"), "{e}");
    }
}
