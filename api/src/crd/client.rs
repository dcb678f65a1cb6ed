//! `EmbeddingClient`: a tenant of the gateway: which endpoints it may call,
//! how it proves who it is, and its quota.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ClientQuota, Condition};

/// A client of one or more endpoints.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "medembed.io",
    version = "v1alpha1",
    kind = "EmbeddingClient",
    namespaced,
    status = "EmbeddingClientStatus",
    shortname = "mec",
    shortname = "embcl",
    category = "medembed",
    doc = "A client (tenant) of embedding endpoints: the endpoints it may call, its credentials (hashed keys or token identity) and its quota.",
    printcolumn(
        name = "Endpoints",
        type_ = "string",
        json_path = ".spec.endpoints",
        description = "Endpoints it may call"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether its credentials and endpoints are usable"
    ),
    printcolumn(
        name = "DryRun",
        type_ = "boolean",
        json_path = ".spec.dryRun",
        description = "Quota only reported, not enforced"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.keys) || has(self.token)").message("a client needs keys or a token identity"))]
pub struct EmbeddingClientSpec {
    /// Names of the EmbeddingEndpoints (same namespace) it may call.
    #[schemars(length(min = 1, max = 64))]
    pub endpoints: Vec<String>,
    /// For endpoints in Key mode: where the SHA-256 hashes of its keys are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<ClientKeys>,
    /// For endpoints in Token mode: the token identity that is this client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<ClientToken>,
    /// Its quota; when absent, the endpoint's default client quota applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<ClientQuota>,
    /// Report quota violations (metrics, logs) without rejecting requests.
    #[serde(default)]
    pub dry_run: bool,
}

/// A Secret holding the hex SHA-256 hashes of a client's two keys (the keys
/// themselves are never stored).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientKeys {
    /// The Secret's name (same namespace).
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// The Secret key holding the primary key's hash (default `primary-sha256`).
    #[serde(default = "primary_key")]
    pub primary_key: String,
    /// The Secret key holding the secondary key's hash (default
    /// `secondary-sha256`); a missing entry means no secondary key.
    #[serde(default = "secondary_key")]
    pub secondary_key: String,
}

fn primary_key() -> String {
    "primary-sha256".into()
}
fn secondary_key() -> String {
    "secondary-sha256".into()
}

/// The token identity of a client: a JWT matches when its `sub` equals
/// `subject` and it carries every claim in `claims`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientToken {
    /// The expected `sub` claim.
    #[schemars(length(min = 1))]
    pub subject: String,
    /// Further claims the token must carry, with these string values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, String>,
}

/// What the operator found checking a client.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddingClientStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: its key Secret is valid and every endpoint it names exists
    /// and takes one of its credentials (reasons `Valid`,
    /// `KeySecretNotFound`, `KeySecretInvalid`, `EndpointNotFound`,
    /// `NoUsableCredentials`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
