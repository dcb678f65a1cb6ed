//! `EmbeddingEndpoint`: a stable scoring URL in front of one or more
//! deployments, with its auth mode, traffic split, mirrored traffic, request
//! limits and default client quota.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ResponseFormat;

use super::{ClientQuota, Condition};

/// An endpoint: the stable URL clients call, and how requests are admitted and
/// split across its deployments.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "medembed.io",
    version = "v1alpha1",
    kind = "EmbeddingEndpoint",
    namespaced,
    status = "EmbeddingEndpointStatus",
    shortname = "mee",
    shortname = "embep",
    category = "medembed",
    doc = "An embedding endpoint: a stable scoring URL with an auth mode, a traffic split across its EmbeddingDeployments, optional mirrored traffic, request limits and a default client quota.",
    printcolumn(
        name = "Auth",
        type_ = "string",
        json_path = ".spec.auth.mode",
        description = "Authentication mode"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the endpoint can serve"
    ),
    printcolumn(
        name = "URL",
        type_ = "string",
        json_path = ".status.scoringUri",
        description = "The scoring URL"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.traffic) || size(self.traffic) == 0 || self.traffic.map(k, self.traffic[k]).sum() == 100").message("traffic weights must sum to 100"),
    validation = Rule::new("!has(self.mirrorTraffic) || !has(self.traffic) || !(self.mirrorTraffic.deployment in self.traffic) || self.traffic[self.mirrorTraffic.deployment] == 0").message("the mirror deployment must take no live traffic"),
)]
pub struct EmbeddingEndpointSpec {
    /// Host names the gateway routes to this endpoint (requests to
    /// `https://HOST/score`); the first one is the scoring URL in the status.
    /// When empty, the endpoint is reached by path on the gateway (by default
    /// `/endpoints/NAMESPACE/NAME/score`; `status.scoringUri` gives the URL).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    #[x_kube(validation = Rule::new("self.all(h, h.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$'))").message("each host must be a lowercase DNS name"))]
    pub hosts: Vec<String>,
    /// How clients authenticate.
    #[serde(default)]
    pub auth: EndpointAuth,
    /// Share of live traffic per deployment name, in percent; the weights must
    /// sum to 100. When empty, the single ready deployment takes all traffic.
    /// A request with the header `azureml-model-deployment: NAME` bypasses the
    /// split.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    #[x_kube(validation = Rule::new("self.all(k, self[k] >= 0 && self[k] <= 100)").message("each traffic weight must be between 0 and 100"))]
    pub traffic: BTreeMap<String, i32>,
    /// A copy of a share of live traffic sent to one deployment that takes no
    /// live traffic; its answers are discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_traffic: Option<MirrorTraffic>,
    /// Limits on each request.
    #[serde(default)]
    pub request_settings: RequestSettings,
    /// Quota of a client that declares none of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_client_quota: Option<ClientQuota>,
    /// The JSON shape of a successful answer. `PerRow` (the default) is what
    /// the managed endpoint answers and what its published clients read: a
    /// list with one object per request row, in row order, each with
    /// `image_features` and/or `text_features` as a list of one vector and
    /// `scaling_factor`. `Documented` is the shape the managed endpoint's
    /// documentation shows, for clients written against it: one object with
    /// `image_features` (one vector per image), `text_features` (one vector
    /// per text) and `scaling_factor`. Errors are the same in both.
    #[serde(default)]
    pub response_format: ResponseFormat,
}

/// Data keys of an endpoint's key Secret: the primary and the secondary key,
/// each the exact string a client sends as `Authorization: Bearer KEY`.
pub const ENDPOINT_KEY_ENTRIES: [&str; 2] = ["primaryKey", "secondaryKey"];

/// Data key of the key set in a `token.jwksConfigMap` ConfigMap.
pub const JWKS_CONFIG_MAP_KEY: &str = "jwks.json";

/// Name of the key Secret the operator generates for endpoint `endpoint`
/// when `auth.keySecretName` is absent.
pub fn generated_key_secret_name(endpoint: &str) -> String {
    format!("{endpoint}-keys")
}

/// How clients of an endpoint authenticate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.mode != 'Token' || has(self.token)").message("auth.token is required in Token mode"),
    validation = Rule::new("self.mode == 'Key' || !has(self.keySecretName)").message("auth.keySecretName is only meaningful in Key mode"),
)]
pub struct EndpointAuth {
    /// `Key` (a primary and a secondary key as `Authorization: Bearer KEY`),
    /// `Token` (a JWT from an identity provider) or `Unauthenticated`
    /// (development only: anyone who reaches the gateway may call).
    #[serde(default)]
    pub mode: AuthMode,
    /// In Key mode, the Secret (same namespace) holding the endpoint's two
    /// keys under the data keys `primaryKey` and `secondaryKey` (the secondary
    /// may be absent). Each value is the exact string a client sends as
    /// `Authorization: Bearer KEY`. When this field is absent, the operator
    /// creates `<endpoint>-keys`, owned by the endpoint, with two keys of 256
    /// random bits each, written as 43 characters of URL-safe base64 without
    /// padding; it never rewrites them, so rotation is replacing one value in
    /// the Secret. The gateway compares keys by their SHA-256 (lowercase hex of
    /// the key's UTF-8 bytes), as it does for EmbeddingClient keys, and keeps
    /// no key in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_name: Option<String>,
    /// In Token mode, how tokens are verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenAuth>,
}

/// Authentication modes of an endpoint.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AuthMode {
    /// A primary and a secondary key, sent as `Authorization: Bearer KEY`.
    #[default]
    Key,
    /// A JWT from an identity provider, sent as `Authorization: Bearer TOKEN`.
    Token,
    /// No authentication: for development only.
    Unauthenticated,
}

impl AuthMode {
    /// The mode's name as written in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Key => "Key",
            AuthMode::Token => "Token",
            AuthMode::Unauthenticated => "Unauthenticated",
        }
    }
}

/// How the gateway verifies JWTs in Token mode.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.jwksUri) != has(self.jwksConfigMap)").message("exactly one of token.jwksUri and token.jwksConfigMap must be set"))]
pub struct TokenAuth {
    /// The expected `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry one of them.
    #[schemars(length(min = 1))]
    pub audiences: Vec<String>,
    /// URL of the identity provider's JSON Web Key Set (reachable from the
    /// gateway, e.g. an in-cluster identity provider).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Name of a ConfigMap holding the key set under `jwks.json`, for clusters
    /// that cannot reach the identity provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_config_map: Option<String>,
    /// Accepted signature algorithms (default RS256 and ES256).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub algorithms: Vec<String>,
}

/// Mirrored (shadow) traffic.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MirrorTraffic {
    /// The deployment that receives the copies; it must take no live traffic.
    #[schemars(length(min = 1))]
    pub deployment: String,
    /// Share of live requests copied to it, in percent (at most 50).
    #[schemars(range(min = 0, max = 50))]
    pub percent: i32,
}

/// Limits on each request to an endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestSettings {
    /// Time budget of a request in milliseconds, queueing included; 408 beyond
    /// (default 5000, at most 300000).
    #[serde(default = "default_timeout_ms")]
    #[schemars(range(min = 1, max = 300000))]
    pub request_timeout_ms: u32,
    /// Largest request body in bytes; 413 beyond (default 32 MiB).
    #[serde(default = "default_max_body_bytes")]
    #[schemars(range(min = 1024, max = 1073741824))]
    pub max_body_bytes: u64,
    /// Most rows (images or texts) per request (default and maximum 1024).
    #[serde(default = "default_max_rows")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_rows_per_request: u32,
}

fn default_timeout_ms() -> u32 {
    5000
}
fn default_max_body_bytes() -> u64 {
    32 * 1024 * 1024
}
fn default_max_rows() -> u32 {
    1024
}

impl Default for RequestSettings {
    fn default() -> Self {
        RequestSettings {
            request_timeout_ms: default_timeout_ms(),
            max_body_bytes: default_max_body_bytes(),
            max_rows_per_request: default_max_rows(),
        }
    }
}

/// What the operator observed of an endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddingEndpointStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The URL clients send scoring requests to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scoring_uri: Option<String>,
    /// In Key mode, the Secret holding the endpoint's keys (`primaryKey`,
    /// `secondaryKey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_name: Option<String>,
    /// Each deployment of the endpoint: its readiness and its traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<EndpointDeploymentStatus>,
}

/// One deployment as seen from its endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointDeploymentStatus {
    /// The deployment's name.
    pub name: String,
    /// Whether it has at least one ready worker on its current spec.
    pub ready: bool,
    /// Its ready workers.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Its share of live traffic, in percent.
    #[serde(default)]
    pub traffic: i32,
    /// Its share of mirrored traffic, in percent.
    #[serde(default)]
    pub mirror: i32,
}
