//! Types shared by several resources: the client quota and status conditions.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Limits applied to one client of an endpoint. An absent limit is no limit.
///
/// Rates are per minute and enforced per gateway replica unless the gateway
/// says otherwise.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientQuota {
    /// Most requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests_per_minute: Option<u64>,
    /// Most images (image rows) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub images_per_minute: Option<u64>,
    /// Most request-body bytes per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub bytes_per_minute: Option<u64>,
    /// Most requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub concurrent_requests: Option<u32>,
    /// Most rows (images or texts) in one request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_rows_per_request: Option<u32>,
    /// Largest request body in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_body_bytes: Option<u64>,
}

/// One condition of a resource's status, as `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition's type: `Ready`, `Progressing` or `Degraded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A machine-readable CamelCase reason, e.g. `InsufficientGPU`.
    #[serde(default)]
    pub reason: String,
    /// A human-readable explanation.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The resource's `metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// Whether the condition's status is `True`.
    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// Finds the condition of type `type_` in `conditions`.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Reason of an endpoint's `Ready=False` when an older endpoint claims one of
/// its host names (the gateway routes the host to the older one only).
pub const REASON_HOST_CONFLICT: &str = "HostConflict";
/// Reason of an endpoint's `Ready=False` when one of its host names is outside
/// its namespace's allow-list (the gateway does not route its host names).
pub const REASON_HOST_NOT_ALLOWED: &str = "HostNotAllowed";
/// Reason of an endpoint's `Ready=False` when its generated key Secret
/// (`NAME-keys`) exists but was not created for it (no owner reference with
/// its UID): the operator neither adopts nor overwrites it, and the gateway
/// accepts no endpoint key for it.
pub const REASON_SECRET_CONFLICT: &str = "SecretConflict";
/// Reason of a client's `Ready=False` when an older client (or endpoint key)
/// holds one of its key hashes (the older one keeps authenticating with it).
pub const REASON_DUPLICATE_KEY: &str = "DuplicateKey";

/// Which of several objects claiming one thing (a host name, a key hash)
/// keeps it: the smallest, i.e. the oldest by `metadata.creationTimestamp`,
/// ties broken by `namespace/name`. The gateway and the operator both order
/// claims by this, so the one the gateway serves is the one the operator
/// reports as ready. A newer claim can never take a name or key away from an
/// older one, whatever the namespaces' names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seniority {
    /// Seconds since the Unix epoch of the object's creation (an object the
    /// API server has not created yet counts as the newest).
    pub created: i64,
    /// `namespace/name`.
    pub id: String,
}

impl Seniority {
    /// The seniority of an object from its metadata.
    pub fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        Seniority {
            created: meta
                .creation_timestamp
                .as_ref()
                .map_or(i64::MAX, |t| t.0.as_second()),
            id: format!(
                "{}/{}",
                meta.namespace.as_deref().unwrap_or(""),
                meta.name.as_deref().unwrap_or("")
            ),
        }
    }
}

/// Whether `host` matches `pattern`: equal, or `*.SUFFIX` matching any name
/// with at least one more label ending in `.SUFFIX` (case-insensitive).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let (p, h) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    match p.strip_prefix("*.") {
        Some(suffix) => h
            .strip_suffix(suffix)
            .and_then(|rest| rest.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty()),
        None => p == h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_claims_first_then_by_name() {
        let a = Seniority {
            created: 10,
            id: "zz/a".into(),
        };
        let b = Seniority {
            created: 20,
            id: "aa/b".into(),
        };
        let c = Seniority {
            created: 20,
            id: "ab/c".into(),
        };
        let mut v = vec![c.clone(), b.clone(), a.clone()];
        v.sort();
        assert_eq!(v, vec![a, b, c]);
    }

    #[test]
    fn host_patterns() {
        assert!(host_matches("chest.example.org", "Chest.example.org"));
        assert!(host_matches("*.radiology.example", "a.radiology.example"));
        assert!(host_matches("*.radiology.example", "a.b.radiology.example"));
        assert!(!host_matches("*.radiology.example", "radiology.example"));
        assert!(!host_matches(
            "*.radiology.example",
            "evilradiology.example"
        ));
        assert!(!host_matches("chest.example.org", "chest.example.org.evil"));
    }
}
