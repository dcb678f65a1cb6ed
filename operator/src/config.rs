//! The operator's configuration: clap derive, every flag with an environment
//! variable (the doc comment is the `--help`).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
pub use medembed_api::serve::LogFormat;

/// Reconciles EmbeddingEndpoints and EmbeddingDeployments into running workers.
#[derive(Debug, Clone, Parser)]
pub struct OperatorConfig {
    /// Watch only this namespace (default: every namespace).
    #[arg(long, env = "MEDEMBED_WATCH_NAMESPACE")]
    pub namespace: Option<String>,

    /// Address of the /healthz, /readyz and /metrics listener.
    #[arg(long, env = "MEDEMBED_OPERATOR_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,

    /// Worker image of deployments that name none.
    #[arg(long, env = "MEDEMBED_WORKER_IMAGE", default_value = concat!("medembed/worker:", env!("CARGO_PKG_VERSION")))]
    pub worker_image: String,

    /// Image of the init container that fetches URL model sources (this
    /// binary's `fetch-model` subcommand).
    #[arg(long, env = "MEDEMBED_FETCH_IMAGE", default_value = concat!("medembed/operator:", env!("CARGO_PKG_VERSION")))]
    pub fetch_image: String,

    /// Host part of the workers' listen address; `$(POD_IP)` binds the pod IP only.
    #[arg(long, env = "MEDEMBED_WORKER_LISTEN_HOST", default_value = "0.0.0.0")]
    pub worker_listen_host: String,

    /// The workers' port.
    #[arg(long, env = "MEDEMBED_WORKER_PORT", default_value_t = 8080)]
    pub worker_port: u16,

    /// The scoring URL reported in an endpoint's status; `{name}` and
    /// `{namespace}` are replaced.
    #[arg(
        long,
        env = "MEDEMBED_SCORING_URI_TEMPLATE",
        default_value = "http://medembed-gateway.medembed-system.svc/endpoints/{namespace}/{name}/score"
    )]
    pub scoring_uri_template: String,

    /// The scoring URL reported for an endpoint that names host names;
    /// `{host}` is replaced by its first host.
    #[arg(
        long,
        env = "MEDEMBED_HOST_SCORING_URI_TEMPLATE",
        default_value = "https://{host}/score"
    )]
    pub host_scoring_uri_template: String,

    /// The gateway's namespace: when set, every worker deployment gets a
    /// NetworkPolicy admitting ingress to its workers only from the gateway's
    /// pods (this namespace, `--gateway-pod-labels`) and from
    /// `--metrics-namespaces`, on the worker port.
    #[arg(long, env = "MEDEMBED_GATEWAY_NAMESPACE")]
    pub gateway_namespace: Option<String>,

    /// Labels selecting the gateway's pods, `k=v,k=v`.
    #[arg(
        long,
        env = "MEDEMBED_GATEWAY_POD_LABELS",
        default_value = "app.kubernetes.io/name=medembed-gateway"
    )]
    pub gateway_pod_labels: String,

    /// Namespaces (comma-separated) whose pods may scrape the workers'
    /// `/metrics` (e.g. Prometheus's).
    #[arg(long, env = "MEDEMBED_METRICS_NAMESPACES", default_value = "")]
    pub metrics_namespaces: String,

    /// Host names each namespace's endpoints may claim: `NS=PATTERN,...`
    /// entries separated by `;`, a pattern being a host name or `*.SUFFIX`.
    /// An endpoint in a listed namespace naming another host is not ready
    /// (`HostNotAllowed`) and the gateway does not route its host names;
    /// namespaces not listed are unrestricted unless a `*` entry is given.
    #[arg(long, env = "MEDEMBED_ALLOWED_HOSTS", value_parser = parse_allowed_hosts, default_value = "")]
    pub allowed_hosts: AllowedHosts,

    /// The Secret, `NAMESPACE/NAME`, into which the operator publishes what
    /// the gateway needs of the tenants' key Secrets and JWKS ConfigMaps (key
    /// hashes, key sets), so that the gateway reads that one Secret instead
    /// of every tenant's. Unset: nothing is published.
    #[arg(long, env = "MEDEMBED_CREDENTIALS_SECRET")]
    pub credentials_secret: Option<String>,

    /// Serve the workers over TLS: each deployment gets a serving
    /// certificate (Secret `<deployment>-worker-tls`, issued by the workers'
    /// CA, renewed before it expires), its workers serve HTTPS only, and the
    /// CA certificate is published for the gateway.
    #[arg(long, env = "MEDEMBED_WORKER_TLS", default_value_t = false)]
    pub worker_tls: bool,

    /// The workers' CA: a `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`
    /// in PKCS #8) in the operator's namespace. Created (ECDSA P-256, ten
    /// years) when absent; used as it is when provided.
    #[arg(
        long,
        env = "MEDEMBED_WORKER_CA_SECRET",
        default_value = "medembed-worker-ca"
    )]
    pub worker_ca_secret: String,

    /// The ConfigMap into which the CA certificate (never its key) is
    /// published as `ca.crt`, for the gateway to mount.
    #[arg(
        long,
        env = "MEDEMBED_WORKER_CA_CONFIGMAP",
        default_value = "medembed-worker-ca"
    )]
    pub worker_ca_configmap: String,

    /// Seconds between reads of the CA Secret (a CA replaced by its owner
    /// is published and used for new certificates at most this long after).
    #[arg(long, env = "MEDEMBED_WORKER_CA_REFRESH_SECONDS", default_value_t = 30)]
    pub worker_ca_refresh_seconds: u64,

    /// The namespace of that ConfigMap: the gateway's (default:
    /// `--gateway-namespace`; without either, the CA is not published).
    #[arg(long, env = "MEDEMBED_WORKER_CA_CONFIGMAP_NAMESPACE")]
    pub worker_ca_configmap_namespace: Option<String>,

    /// Name of the leader-election Lease.
    #[arg(long, env = "MEDEMBED_LEASE_NAME", default_value = "medembed-operator")]
    pub lease_name: String,

    /// Namespace of the leader-election Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "medembed-system")]
    pub lease_namespace: String,

    /// This replica's identity in the Lease (default: the pod name, else the
    /// host name plus a random suffix).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Seconds a Lease is held without renewal before another replica may
    /// take it.
    #[arg(long, env = "MEDEMBED_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,

    /// Seconds between renewals of the Lease (and tries to take it).
    #[arg(long, env = "MEDEMBED_LEASE_RENEW_SECONDS", default_value_t = 5)]
    pub lease_renew_seconds: u64,

    /// Seconds between periodic reconciles of a healthy object.
    #[arg(long, env = "MEDEMBED_RESYNC_SECONDS", default_value_t = 300)]
    pub resync_seconds: u64,

    /// Milliseconds a change waits for more changes to the same object before
    /// its reconcile starts (a new pod, its scheduling and its readiness then
    /// cost one reconcile instead of several).
    #[arg(long, env = "MEDEMBED_DEBOUNCE_MS", default_value_t = 500)]
    pub debounce_ms: u64,

    /// Reconciles running at once per controller.
    #[arg(long, env = "MEDEMBED_CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,

    /// Log format.
    #[arg(long, env = "MEDEMBED_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

/// Per-namespace allow-list of host patterns (see `--allowed-hosts`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts(pub std::collections::BTreeMap<String, Vec<String>>);

impl AllowedHosts {
    /// Whether an endpoint in `namespace` may claim `host`.
    pub fn allows(&self, namespace: &str, host: &str) -> bool {
        match self.0.get(namespace).or_else(|| self.0.get("*")) {
            None => true,
            Some(patterns) => patterns
                .iter()
                .any(|p| medembed_api::crd::host_matches(p, host)),
        }
    }
}

/// Parses `NS=PATTERN,PATTERN;NS2=PATTERN`.
pub fn parse_allowed_hosts(s: &str) -> Result<AllowedHosts, String> {
    let mut map = std::collections::BTreeMap::new();
    for entry in s.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (ns, patterns) = entry
            .split_once('=')
            .ok_or_else(|| format!("{entry:?}: expected NAMESPACE=PATTERN[,PATTERN...]"))?;
        let patterns: Vec<String> = patterns
            .split(',')
            .map(|p| p.trim().to_ascii_lowercase())
            .filter(|p| !p.is_empty())
            .collect();
        map.entry(ns.trim().to_string())
            .or_insert_with(Vec::new)
            .extend(patterns);
    }
    Ok(AllowedHosts(map))
}

impl OperatorConfig {
    /// Defaults, for tests and embedding (listener on 127.0.0.1, port 0).
    pub fn for_tests() -> Self {
        let mut c = OperatorConfig::parse_from(["medembed-operator"]);
        c.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c
    }

    /// The Lease's duration.
    pub fn lease_duration(&self) -> Duration {
        Duration::from_secs(self.lease_duration_seconds.max(1))
    }

    /// The controllers' settings: concurrency and debounce.
    pub fn controller(&self) -> kube::runtime::controller::Config {
        kube::runtime::controller::Config::default()
            .concurrency(self.concurrency)
            .debounce(Duration::from_millis(self.debounce_ms))
    }

    /// The credentials publisher's settings, when `--credentials-secret` is set.
    pub fn credentials(&self) -> Result<Option<crate::credentials::Settings>, String> {
        let Some(target) = self.credentials_secret.as_deref().filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let (namespace, name) = crate::credentials::parse_target(target)
            .map_err(|e| format!("--credentials-secret: {e}"))?;
        Ok(Some(crate::credentials::Settings {
            namespace,
            name,
            watch_namespace: self.namespace.clone(),
            resync: Duration::from_secs(self.resync_seconds.max(1)),
        }))
    }

    /// The workers' NetworkPolicy settings, when the gateway's namespace is
    /// known.
    pub fn network_policy(
        &self,
    ) -> Result<Option<crate::resources::NetworkPolicySettings>, String> {
        let Some(ns) = self.gateway_namespace.clone().filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        let mut labels = std::collections::BTreeMap::new();
        for kv in self
            .gateway_pod_labels
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("--gateway-pod-labels: {kv:?} is not k=v"))?;
            labels.insert(k.trim().to_string(), v.trim().to_string());
        }
        if labels.is_empty() {
            return Err(
                "--gateway-pod-labels is empty: every pod of the namespace would be admitted"
                    .into(),
            );
        }
        Ok(Some(crate::resources::NetworkPolicySettings {
            gateway_namespace: ns,
            gateway_labels: labels,
            metrics_namespaces: self
                .metrics_namespaces
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        }))
    }

    /// The Lease's renewal period.
    pub fn lease_renew(&self) -> Duration {
        Duration::from_secs(self.lease_renew_seconds.max(1))
    }

    /// The scoring URL of endpoint `name` in `namespace`: by its first host
    /// name when it has one, else by path on the gateway.
    pub fn scoring_uri(&self, namespace: &str, name: &str, hosts: &[String]) -> String {
        match hosts.first() {
            Some(host) => self.host_scoring_uri_template.replace("{host}", host),
            None => self
                .scoring_uri_template
                .replace("{namespace}", namespace)
                .replace("{name}", name),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn allowed_hosts_per_namespace() {
        let a = parse_allowed_hosts("radiology=*.rad.example, chest.example ; lab=lab.example")
            .unwrap();
        assert!(a.allows("radiology", "x.rad.example"));
        assert!(a.allows("radiology", "chest.example"));
        assert!(!a.allows("radiology", "lab.example"));
        assert!(!a.allows("lab", "chest.example"));
        assert!(a.allows("other", "anything.example"));
        let strict = parse_allowed_hosts("*=*.shared.example").unwrap();
        assert!(!strict.allows("other", "anything.example"));
        assert!(parse_allowed_hosts("nonsense").is_err());
        assert_eq!(parse_allowed_hosts("").unwrap(), AllowedHosts::default());
    }

    #[test]
    fn scoring_uri_by_host_or_path() {
        let c = OperatorConfig::for_tests();
        assert_eq!(
            c.scoring_uri("radiology", "chest", &[]),
            "http://medembed-gateway.medembed-system.svc/endpoints/radiology/chest/score"
        );
        let hosts = ["chest.example.org".to_string(), "b.example.org".to_string()];
        assert_eq!(
            c.scoring_uri("radiology", "chest", &hosts),
            "https://chest.example.org/score"
        );
    }
}
