//! `EmbeddingDeployment`: one model served by a set of GPU workers behind an
//! endpoint: where the model comes from, how the runtime batches, how many
//! workers (fixed or autoscaled), their resources, placement and probes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, EnvVar, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;
use crate::ExecutionProvider;

/// A deployment: one model on a set of workers, behind an endpoint.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "medembed.io",
    version = "v1alpha1",
    kind = "EmbeddingDeployment",
    namespaced,
    status = "EmbeddingDeploymentStatus",
    shortname = "med",
    shortname = "embdep",
    category = "medembed",
    doc = "An embedding deployment: one model served by a set of GPU workers behind an EmbeddingEndpoint.",
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".spec.endpoint",
        description = "The endpoint it serves"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.replicas",
        description = "Workers wanted"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Workers ready"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why it is or is not ready"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.instanceCount) && has(self.autoscale))").message("set either instanceCount or autoscale, not both"))]
pub struct EmbeddingDeploymentSpec {
    /// The EmbeddingEndpoint (same namespace) this deployment serves behind.
    #[schemars(length(min = 1, max = 63))]
    pub endpoint: String,
    /// Where the model files come from.
    pub model: ModelSource,
    /// How the worker runs the model.
    #[serde(default)]
    pub runtime: Runtime,
    /// A fixed number of workers (default 1 when autoscale is not set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub instance_count: Option<i32>,
    /// Autoscaling on the workers' utilisation ((busy + queued) / capacity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
    /// Compute resources of each worker.
    #[serde(default)]
    pub resources: WorkerResources,
    /// Node labels a worker's node must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the workers' pods (e.g. for tainted GPU nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Affinity rules of the workers' pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// RuntimeClass of the workers' pods (e.g. `nvidia`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,
    /// PriorityClass of the workers' pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Readiness and liveness probes (defaults as the managed service's).
    #[serde(default)]
    pub probes: Probes,
    /// The worker image, instead of the operator's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Extra environment variables of the worker container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
}

/// Where the model files come from; exactly one source.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.pvc) ? 1 : 0) + (has(self.image) ? 1 : 0) + (has(self.url) ? 1 : 0) == 1").message("exactly one model source (pvc, image or url) must be set"))]
pub struct ModelSource {
    /// A directory on a PersistentVolumeClaim (mounted read-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcModelSource>,
    /// An OCI image holding the model files, mounted as an image volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageModelSource>,
    /// A tar archive of the model directory at an HTTP(S) URL, fetched by an
    /// init container into a cache volume and verified against its SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<UrlModelSource>,
}

/// A model directory on a PersistentVolumeClaim.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcModelSource {
    /// The claim's name (same namespace).
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// The model directory inside the volume (default: its root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A model directory inside an OCI image (Kubernetes image volumes).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageModelSource {
    /// The image reference, preferably by digest.
    #[schemars(length(min = 1))]
    pub reference: String,
    /// The model directory inside the image (default: its root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `Always`, `IfNotPresent` or `Never` (default IfNotPresent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<String>,
}

/// A model archive at an HTTP(S) URL.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UrlModelSource {
    /// The archive's URL (`http://` or `https://`; a `.tar` or `.tar.gz` of
    /// the model directory).
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("model.url.url must be an http:// or https:// URL"))]
    #[schemars(length(min = 8, max = 2048))]
    pub url: String,
    /// The archive's SHA-256, 64 lowercase hex digits; a mismatch fails the
    /// init container and the deployment reports ModelSourceInvalid.
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{64}$')").message("model.url.sha256 must be 64 lowercase hex digits"))]
    #[schemars(length(max = 64))]
    pub sha256: String,
    /// Size of the cache volume the archive is unpacked into (default 20Gi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_size: Option<Quantity>,
}

/// How the worker runs the model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Runtime {
    /// `cpu`, `cuda` or `tensorrt` (default cpu).
    #[serde(default)]
    pub execution_provider: ExecutionProvider,
    /// Inference sessions per GPU (per tower); more than one helps only when
    /// the GPU has room (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 16))]
    pub sessions_per_gpu: u32,
    /// Largest image batch one inference runs (default 16).
    #[serde(default = "default_batch")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_batch_size: u32,
    /// Longest a batch waits for more work, in milliseconds (default 5).
    #[serde(default = "default_delay")]
    #[schemars(range(min = 0, max = 10000))]
    pub max_queue_delay_ms: u32,
    /// Most requests one worker processes at once; beyond it, 429 (default 256).
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_concurrent_requests: u32,
}

fn one() -> u32 {
    1
}
fn default_batch() -> u32 {
    16
}
fn default_delay() -> u32 {
    5
}
fn default_concurrency() -> u32 {
    256
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            execution_provider: ExecutionProvider::Cpu,
            sessions_per_gpu: one(),
            max_batch_size: default_batch(),
            max_queue_delay_ms: default_delay(),
            max_concurrent_requests: default_concurrency(),
        }
    }
}

/// Autoscaling bounds and target.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscale.minReplicas must not exceed autoscale.maxReplicas"))]
pub struct Autoscale {
    /// Fewest workers (default 1).
    #[serde(default = "one_i32")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most workers.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Target of `medembed_worker_utilization_percent` ((busy + queued) over
    /// capacity), averaged over the workers (default 70). The HPA reads it as
    /// a Pods metric through the custom metrics API, so the cluster needs an
    /// adapter serving the workers' Prometheus metrics (e.g.
    /// prometheus-adapter).
    #[serde(default = "default_target")]
    #[schemars(range(min = 1, max = 100))]
    pub target_utilization_percent: i32,
}

fn one_i32() -> i32 {
    1
}
fn default_target() -> i32 {
    70
}

/// Compute resources of each worker.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerResources {
    /// GPUs per worker (default none: CPU only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuResources>,
    /// CPU per worker (request and limit), e.g. `4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory per worker (request and limit), e.g. `16Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

/// GPUs of each worker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuResources {
    /// GPUs (or MIG slices) per worker.
    #[schemars(range(min = 1, max = 16))]
    pub count: i32,
    /// The extended resource to request: `nvidia.com/gpu` (default), or a MIG
    /// profile such as `nvidia.com/mig-1g.10gb` or `nvidia.com/mig-3g.40gb`.
    #[serde(default = "default_gpu_resource")]
    #[schemars(length(min = 1, max = 253))]
    pub resource_name: String,
}

/// The default GPU resource name.
pub const DEFAULT_GPU_RESOURCE: &str = "nvidia.com/gpu";

fn default_gpu_resource() -> String {
    DEFAULT_GPU_RESOURCE.to_string()
}

/// Probes of the worker (its `/readyz` turns ready once the model is loaded
/// and warmed up; `/livez` while the process serves).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Probes {
    /// Readiness probe on `/readyz` (defaults: initial delay 10 s, period
    /// 10 s, timeout 2 s, failure threshold 30, success threshold 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ProbeSettings>,
    /// Liveness probe on `/livez` (same defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<ProbeSettings>,
}

/// Timing of one probe; an absent field takes the managed service's default.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSettings {
    /// Seconds before the first probe (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub initial_delay_seconds: Option<i32>,
    /// Seconds between probes (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: Option<i32>,
    /// Seconds a probe may take (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<i32>,
    /// Consecutive failures before the probe fails (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub failure_threshold: Option<i32>,
    /// Consecutive successes before the probe passes again (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub success_threshold: Option<i32>,
}

/// What the operator observed of a deployment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddingDeploymentStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, with reasons such as
    /// `ModelSourceInvalid`, `InsufficientGPU`, `Unschedulable`,
    /// `ModelLoadFailed`, `OutOfMemory` or `CrashLoop`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Workers wanted.
    #[serde(default)]
    pub replicas: i32,
    /// Workers ready (model loaded and warmed up).
    #[serde(default)]
    pub ready_replicas: i32,
    /// Workers on the current spec.
    #[serde(default)]
    pub updated_replicas: i32,
    /// The worker Service's name (the gateway discovers workers through its
    /// EndpointSlices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
}
